"""What every benchmark shares: the environment record, the result JSON (command, environment, goals) and tables.

A benchmark calls the library for everything it measures; this module only records and prints.
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
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


# Two-sided 95 % quantiles of Student's t by degrees of freedom. Past 30, 1.96 + 2.4 / df is within 0.15 % of the exact
# quantile (2.037 against 2.040 for 31, 2.000 for 60, 1.980 for 120); 1.96 alone would make small intervals too narrow.
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
        21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045,
        30: 2.042}  # fmt: skip


def t_95(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` degrees of freedom (``df`` >= 1)."""
    return T_95[df] if df in T_95 else 1.96 + 2.4 / df


def paired_interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean and 95 % interval (t distribution over the seeds) of per-seed paired differences (method A minus method
    B on the same seed): ``{"mean", "low", "high", "per_seed"}``. With one value the interval is unknown (low and
    high None); with none, the mean is too."""
    values = list(values)
    if not values:
        return {"mean": None, "low": None, "high": None, "per_seed": []}
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "low": None, "high": None, "per_seed": values}
    half = t_95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "low": mean - half, "high": mean + half, "per_seed": values}


def stage_curves(history: list[dict], stage: str, offset: int, keep: tuple[str, ...]) -> list[dict]:
    """A stage's logged training metrics (``keep`` of them; floats to 4 decimals), stepped like a benchmark's
    validation curve: ``offset`` is the steps of the method's earlier stages (GAD's gad stage continues warmup's)."""
    return [{"step": offset + h["step"], "stage": stage,
             **{k: round(v, 4) if isinstance(v, float) else v for k, v in h.items() if k in keep}}
            for h in history if "train_runtime" not in h and "step" in h]  # fmt: skip
