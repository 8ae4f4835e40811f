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
    from gad.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_train_file() -> Path:
    return REPO / "recipes" / "data" / "tiny-train.jsonl"


TINY_RUN_OVERRIDES = [
    "seqkd.max_steps=6",
    "warmup.max_steps=4",
    "warmup.d_only_steps=1",
    "gad.max_steps=4",
    "save_steps=2",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """seqkd, warmup and gad trained once through the real `gad` console script on the tiny recipe (shortened)."""
    import subprocess
    import sys

    run = tmp_path_factory.mktemp("tiny-run") / "run"
    gad = Path(sys.executable).parent / "gad"
    command = [str(gad), "train", "--stage", "seqkd,warmup,gad", "--config", str(REPO / "recipes" / "tiny-cpu.yaml"),
               f"run_dir={run}", *TINY_RUN_OVERRIDES]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (run / "train.log").write_text(result.stdout + result.stderr)
    return run
