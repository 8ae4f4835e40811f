"""A tiny random-initialised chat model (about 1.6 M parameters) for tests, the tiny recipe and CPU smoke runs.

Nothing is downloaded: the byte-level BPE tokenizer (2,048 tokens, trained on TinyStories and Dolly text) ships with
the package, and the weights are drawn from a seed. Recipes name it ``builtin:tiny-llama`` (see
:func:`gad.models.resolve_model`); it is written once to a folder and then loads like any Hugging Face checkpoint.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# ChatML, as SmolLM2 and Qwen use: the answer ends with <|im_end|>, which is also the model's EOS token.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """The shipped 2,048-token tokenizer with a ChatML chat template; EOS is ``<|im_end|>``."""
    from transformers import PreTrainedTokenizerFast

    path = resources.files("gad") / "data" / "tiny-tokenizer.json"
    with resources.as_file(path) as file:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(file),
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            bos_token=None,
            additional_special_tokens=["<|im_start|>"],
        )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(folder: str | Path, *, seed: int = 0, hidden_size: int = 128, num_layers: int = 4) -> Path:
    """Write a random-initialised tiny Llama and its tokenizer to ``folder`` as a Hugging Face checkpoint."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
