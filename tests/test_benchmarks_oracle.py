"""Smoke test of the starved-regime oracle benchmark: the whole pipeline at minimal sizes, and its JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "oracle.py"


def _load():
    spec = importlib.util.spec_from_file_location("oracle_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_oracle_benchmark_runs_end_to_end_at_minimal_sizes(tmp_path, capsys):
    oracle = _load()
    out = tmp_path / "oracle.json"
    argv = [
        "--oracle-hidden", "32", "--oracle-layers", "1", "--student-hidden", "16", "--student-layers", "1",
        "--train-prompts", "32", "--val-prompts", "8", "--test-prompts", "20", "--eval-samples", "2",
        "--seeds", "0", "--variants", "seqkd", "gad-paper", "gad-gate", "--seqkd-epochs", "2", "--sft-batch", "16",
        "--warmup-generations", "2", "--prompts-per-step", "4", "--generations", "2", "--gad-steps", "2",
        "--c2st-epochs", "1", "--workdir", str(tmp_path / "work"), "--out", str(out),
    ]  # fmt: skip
    oracle.main(argv)

    result = json.loads(out.read_text())
    for key in ("command", "config", "oracle", "oracle_c2st", "seeds", "summary", "goal", "runs", "wall_seconds"):
        assert key in result, key
    assert {"entropy", "logit_scale", "nll_wrong_prompt", "nll_uniform_answers"} <= set(result["oracle"])
    summary = result["summary"]
    assert {"oracle (floor)", "init", "seqkd", "seqkd-T0.8", "warmup", "gad-paper", "gad-gate"} <= set(summary)
    for name in ("init", "seqkd", "seqkd-T0.8", "gad-paper", "gad-gate"):
        for metric in ("nll_oracle", "nll_test", "c2st"):
            assert {"mean", "std", "se", "n"} <= set(summary[name][metric]), (name, metric)
        assert summary[name]["nll_oracle"]["mean"] >= 0 and 0 <= summary[name]["c2st"]["mean"] <= 100
    assert "d_acc_first" in summary["gad-paper"] and "gate_open" in summary["gad-gate"]
    run = result["runs"]["0"]["models"]
    assert len(run["gad-paper"]["d_acc"]) == 2  # one held-out accuracy per GAD step
    assert set(result["goal"]) == {"gad-paper", "gad-gate"}
    assert {"c2st", "nll_oracle", "no_harm", "better"} <= set(result["goal"]["gad-paper"])
    assert "NLL_oracle" in capsys.readouterr().out  # the table
