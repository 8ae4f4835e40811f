"""Smoke test of the starved-regime oracle benchmark: one seed of the paper's protocol at minimal sizes (its JSON),
the merge over seeds (paired intervals, goals), and the paired interval itself."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
from _common import paired_interval

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "oracle.py"


def _load():
    spec = importlib.util.spec_from_file_location("oracle_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _in_range(metrics: dict) -> None:
    assert 0 < metrics["nll_oracle"] < 20 and 0 < metrics["nll_test"] < 20, metrics
    assert 0 <= metrics["c2st"] <= 100, metrics


def test_one_seed_then_merge(tmp_path, capsys):
    oracle = _load()
    out = tmp_path / "out"
    argv = [
        "run", "--seeds", "0", "--oracle-hidden", "32", "--oracle-layers", "1", "--student-hidden", "16",
        "--student-layers", "1", "--train-prompts", "32", "--val-prompts", "8", "--test-prompts", "20",
        "--eval-samples", "2", "--variants", "gad-paper", "gad-gate", "--seqkd-epochs", "2", "--warmup-epochs", "1",
        "--gad-epochs", "1", "--seqkd-batch", "16", "--prompts-per-step", "8", "--generations", "2",
        "--d-only-steps", "1", "--eval-every", "2", "--c2st-epochs", "1", "--workdir", str(tmp_path / "work"),
        "--out-dir", str(out),
    ]  # fmt: skip
    written = oracle.main(argv)
    saved = json.loads((out / "seed0.json").read_text())
    assert saved == written[0] and "oracle.py run" in saved["command"] and saved["goals"] == {}
    assert saved["seed"] == 0 and saved["wall_seconds"] > 0 and set(saved["variants"]) == {"gad-paper", "gad-gate"}
    assert {"entropy", "logit_scale", "nll_wrong_prompt", "nll_uniform_answers"} <= set(saved["oracle"])
    assert saved["steps_per_epoch"] == {"seqkd": 2, "warmup": 4, "gad": 4}  # 32 prompts, 16 (SeqKD) or 8 a step
    _in_range(saved["reference"]["init"])

    methods = saved["methods"]
    assert set(methods) == {"seqkd", "gad-paper", "gad-gate"}
    assert methods["seqkd"]["steps"] == {"seqkd": 4}  # 2 epochs x 2 steps
    assert [p["step"] for p in methods["seqkd"]["validation"]] == [2, 4]
    assert saved["warmup"]["steps"] == 4 and [p["step"] for p in saved["warmup"]["validation"]] == [2, 4]
    assert len(saved["warmup"]["discriminator"]["d_acc"]) == 4  # one held-out accuracy per warmup step
    for name in ("gad-paper", "gad-gate"):
        entry = methods[name]
        assert entry["steps"] == {"warmup": 4, "gad": 4}  # 1 warmup epoch + 1 adversarial epoch of 4 steps
        # the variant's curve continues the shared warmup's
        assert [(p["step"], p["stage"]) for p in entry["validation"]] == [
            (2, "warmup"), (4, "warmup"), (6, "gad"), (8, "gad")]  # fmt: skip
        assert entry["validation"][:2] == saved["warmup"]["validation"]
        assert len(entry["discriminator"]["d_acc"]) == 4
        assert entry["train_seconds"] > saved["warmup"]["train_seconds"] > 0  # the shared warmup is counted
    assert "gate_open" in methods["gad-gate"]["discriminator"]
    for name, entry in methods.items():
        curve = entry["validation"]
        best = min(curve, key=lambda p: p["score"])
        assert entry["chosen_step"] == best["step"] and entry["chosen_stage"] == best["stage"], name
        for point in curve:
            assert point["score"] == pytest.approx(point["nll_oracle"] + point["nll_test"])
        _in_range(entry["chosen"])
        _in_range(entry["last"])
        assert entry["train_seconds"] > entry["validation_seconds"] > 0
        if entry["chosen_step"] != sum(entry["steps"].values()):  # an earlier checkpoint, evaluated on its own
            assert entry["chosen"] != entry["last"]
    _in_range(methods["seqkd"]["chosen_T0.8"])
    assert "NLL_oracle" in capsys.readouterr().out  # the seed's table

    # Two seeds with the same numbers: every paired difference has a zero-width interval.
    twin = copy.deepcopy(saved)
    twin["seed"] = 1
    (out / "seed1.json").write_text(json.dumps(twin))
    merged_path = tmp_path / "oracle.json"
    merged = oracle.main(["merge", str(out / "seed0.json"), str(out / "seed1.json"), "--out", str(merged_path)])
    assert json.loads(merged_path.read_text()) == merged and merged["seeds"] == [0, 1]
    assert set(merged["goals"]) == {f"{v}_{k}_not_worse" for v in ("gad-paper", "gad-gate")
                                    for k in ("c2st_gap", "nll_oracle")}  # fmt: skip
    for variant in ("gad-paper", "gad-gate"):
        seqkd, gad = methods["seqkd"]["chosen"], methods[variant]["chosen"]
        diffs = {"c2st_gap": abs(gad["c2st"] - 50) - abs(seqkd["c2st"] - 50),
                 "nll_oracle": gad["nll_oracle"] - seqkd["nll_oracle"]}  # fmt: skip
        for key, diff in diffs.items():
            entry = merged["goals"][f"{variant}_{key}_not_worse"]
            interval = entry["value"]
            assert interval["per_seed"] == pytest.approx([diff, diff])
            assert interval["low"] == pytest.approx(diff) and interval["high"] == pytest.approx(diff)
            assert isinstance(entry["met"], bool) and entry["met"] == (interval["low"] <= 0), (variant, key)
    table = merged["table"]
    assert table["seqkd/chosen"]["c2st"]["per_seed"] == [methods["seqkd"]["chosen"]["c2st"]] * 2
    assert table["gad-paper/last"]["nll_oracle"]["std"] == 0.0
    assert merged["compute"]["gad-paper"]["steps"] == {"warmup": 4, "gad": 4}

    # A variant that is worse than SeqKD on every seed, by more than the seeds' spread, does not meet the goal.
    for seed, worse_by in ((0, 1.0), (1, 1.1)):
        record = copy.deepcopy(saved)
        record["seed"] = seed
        chosen = record["methods"]["gad-paper"]["chosen"]
        chosen["nll_oracle"] = record["methods"]["seqkd"]["chosen"]["nll_oracle"] + worse_by
        (out / f"seed{seed}.json").write_text(json.dumps(record))
    merged = oracle.merge([out / "seed0.json", out / "seed1.json"])
    worse = merged["goals"]["gad-paper_nll_oracle_not_worse"]
    assert worse["value"]["low"] > 0 and worse["met"] is False
    assert merged["paired"]["gad-paper"]["chosen"]["nll_oracle"]["mean"] == pytest.approx(1.05)

    # One seed: no interval, so no goal is met.
    single = oracle.merge([out / "seed0.json"])
    assert all(entry["met"] is False and entry["value"]["low"] is None for entry in single["goals"].values())
    # A quick file (or another setup) is never merged with full ones.
    quick = copy.deepcopy(saved)
    quick["seed"], quick["config"]["quick"] = 1, True
    (out / "quick_seed1.json").write_text(json.dumps(quick))
    with pytest.raises(SystemExit, match="quick"):
        oracle.merge([out / "seed0.json", out / "quick_seed1.json"])


def test_paired_interval_uses_the_t_distribution():
    interval = paired_interval([1.0, 3.0, 5.0])  # mean 3, standard deviation 2, 2 degrees of freedom
    half = 4.303 * 2 / math.sqrt(3)
    assert interval["mean"] == pytest.approx(3.0) and interval["per_seed"] == [1.0, 3.0, 5.0]
    assert interval["low"] == pytest.approx(3 - half) and interval["high"] == pytest.approx(3 + half)
    assert paired_interval([2.0]) == {"mean": 2.0, "low": None, "high": None, "per_seed": [2.0]}
    assert paired_interval([]) == {"mean": None, "low": None, "high": None, "per_seed": []}
    # past the table, the approximation of the t quantile stays between the normal's and df 30's
    many = paired_interval([float(i % 2) for i in range(100)])
    half_many = (many["high"] - many["low"]) / 2
    sd = math.sqrt(sum((float(i % 2) - 0.5) ** 2 for i in range(100)) / 99)
    assert 1.96 * sd / 10 < half_many < 2.042 * sd / 10
