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
    """The `gad` command line as a subprocess."""
    return [sys.executable, "-m", "gad", *args]


def main(argv: list[str]) -> int:
    """The `gad` command line in-process."""
    from gad import cli

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
