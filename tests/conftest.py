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


# Every process a test starts inherits this marker, so one that outlives its parent (re-parented to init) is still
# known to be ours, and processes of other pytest sessions running at the same time are not.
SESSION_MARKER = "GAD_TEST_SESSION"
# Python's own helper processes, which end with the interpreter that started them.
HELPER_COMMANDS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _session_processes(marker: str) -> list:
    """Live processes started from this session: descendants of pytest, and anything carrying the session marker."""
    import psutil

    me = psutil.Process()
    found = {child.pid: child for child in me.children(recursive=True)}
    for process in psutil.process_iter():
        if process.pid in found or process.pid == me.pid:
            continue
        try:
            if process.environ().get(SESSION_MARKER) == marker:
                found[process.pid] = process
        except (psutil.Error, OSError):  # gone meanwhile, or not ours to read
            continue
    alive = []
    for process in found.values():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and not any(
                helper in " ".join(process.cmdline()) for helper in HELPER_COMMANDS
            ):
                alive.append(process)
        except psutil.Error:
            continue
    return alive


@pytest.fixture(scope="session", autouse=True)
def no_leftover_processes():
    """Fail the session if a process started by a test (a teacher server, a fault server) is still running at the end.

    Processes running before the first test (pytest's own helpers, if any) are ignored. Leftovers get a few seconds to
    finish exiting, then they are killed (so they do not outlive the run) and the session fails with their commands.
    """
    import uuid

    import psutil

    marker = os.environ[SESSION_MARKER] = uuid.uuid4().hex
    before = {process.pid for process in _session_processes(marker)}
    yield
    leftovers = [process for process in _session_processes(marker) if process.pid not in before]
    _gone, alive = psutil.wait_procs(leftovers, timeout=3)
    if not alive:
        return
    described = []
    for process in alive:
        try:
            described.append(f"{process.pid}: {' '.join(process.cmdline())[:200]}")
            process.kill()
        except psutil.Error:
            continue
    if described:
        pytest.fail("processes started by the tests are still running:\n" + "\n".join(described), pytrace=False)


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
