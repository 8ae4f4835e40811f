"""What every benchmark shares: the environment record, the result JSON (command, environment, goals) and tables.

A benchmark calls the library for everything it measures; this module only records and prints.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from gad.runtime import environment, offline

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

offline()


def goal(value: Any, met: bool, target: str) -> dict[str, Any]:
    """One entry of a result's ``goals`` map: the measured value, whether it meets the target, and the target."""
    return {"value": value, "met": bool(met), "target": target}


def command_line(benchmark: str, argv: list[str] | None = None) -> str:
    """The command that produced a result, as it can be pasted back into a shell from the repository root."""
    return shlex.join(["python", f"benchmarks/{benchmark}.py", *(sys.argv[1:] if argv is None else argv)])


def write_result(
    path: Path, benchmark: str, result: dict[str, Any], argv: list[str] | None = None, *, script: str | None = None
) -> dict[str, Any]:
    """Write a benchmark's JSON: its name, the command (``argv``: the benchmark's arguments, default the process's),
    the date, the environment, its ``goals`` (a map of :func:`goal` entries, required), then the rest of its
    figures; returns what was written. ``script``: the file under benchmarks/ when it is not ``BENCHMARK.py``."""
    if not isinstance(result.get("goals"), dict):
        raise ValueError("a benchmark result needs a 'goals' map")
    record = {
        "benchmark": benchmark,
        "command": command_line(script or benchmark, argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "environment": environment(),
        **result,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return record


def print_goals(goals: dict[str, dict[str, Any]]) -> None:
    for name, entry in goals.items():
        print(f"goal {name}: {entry['value']} ({entry['target']}) -> {'met' if entry['met'] else 'NOT met'}")
