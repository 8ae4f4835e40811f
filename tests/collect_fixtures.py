"""Helpers shared by the collect / serve tests (kept out of conftest.py, which the lead owns)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_prompts(path: Path, count: int, *, start: int = 1) -> Path:
    """A JSONL prompt file with ids p<start>..; prompts are plain strings."""
    with path.open("w", encoding="utf-8") as handle:
        for number in range(start, start + count):
            handle.write(json.dumps({"id": f"p{number}", "prompt": f"question number {number}"}) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def gad_command(*args: str) -> list[str]:
    """The CLI as a subprocess. ``collect`` runs through ``python -m gad.collect`` (the same ``gad.cli.main``, but
    without importing the training commands, which take seconds to load)."""
    if args and args[0] == "collect":
        return [sys.executable, "-m", "gad.collect", *args[1:]]
    return [sys.executable, "-m", "gad.cli", *args]


def main(argv: list[str]) -> int:
    """``gad.cli.main`` in-process, with only the collect and serve commands registered (fast, and isolated from
    other commands that are being edited)."""
    from unittest import mock

    from gad import cli

    with mock.patch.object(cli, "COMMAND_MODULES", ("gad.collect.cli", "gad.serve")):
        return cli.main(argv)


def collect_args(prompts: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    """Arguments for a fast test collection: short timeout, millisecond backoff, no progress bar."""
    return [
        "collect",
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--model",
        "test-model",
        "--base-url",
        base_url,
        "--timeout",
        "2",
        "--backoff-base",
        "0.01",
        "--max-retries",
        "8",
        "--no-progress",
        *extra,
    ]
