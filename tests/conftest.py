"""Shared fixtures: offline Hugging Face, a per-session cache for built-in models, one tiny model folder."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def gad_cache_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gad-cache")
    os.environ["GAD_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 1 M-parameter random Llama with the shipped tokenizer and a ChatML template (read-only: copy to change)."""
    from gad.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_train_file() -> Path:
    return REPO / "recipes" / "data" / "tiny-train.jsonl"
