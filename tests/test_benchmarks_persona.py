"""Smoke test of benchmarks/persona.py: the whole benchmark on the built-in tiny model, in seconds."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import REPO


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("persona_benchmark", REPO / "benchmarks" / "persona.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("gad_warmup", ["sft", "joint"])
def test_persona_benchmark_runs_end_to_end(tmp_path, gad_warmup):
    train = tmp_path / "train.jsonl"
    with train.open("w") as handle:
        for i in range(6):
            handle.write(json.dumps({"id": str(i), "prompt": f"Tell me about the cat number {i}."}) + "\n")
    out = tmp_path / "persona.json"
    result = _load_benchmark().main([
        "--model", "builtin:tiny-llama", "--checker-regex", "e", "--system-prompt", "Talk like a pirate.",
        "--data-dir", str(tmp_path), "--train-set", "train", "--train-prompts", "6", "--test-prompts", "3",
        "--eval-samples", "2", "--max-new-tokens", "8", "--seeds", "0", "--train-seconds", "2",
        "--warmup-steps", "2", "--d-only-steps", "1", "--disc-layers", "2", "--lora-r", "0", "--c2st-splits", "2",
        "--gad-warmup", gad_warmup, "--workdir", str(tmp_path / "work"), "--out", str(out),
    ])  # fmt: skip
    saved = json.loads(out.read_text())
    for key in ("wall_seconds", "teacher", "data", "config", "reference", "runs", "summary", "goals"):
        assert key in saved and key in result
    assert "persona.py" in saved["command"] and saved["environment"]["versions"]["torch"]
    assert {r["method"] for r in saved["runs"]} == {"seqkd", "gad"}
    for run in saved["runs"]:
        assert 0 <= run["c2st"]["acc"] <= 100 and run["c2st"]["se"] >= 0
        assert 0 <= run["style_pass"] <= 100 and "rouge_l" in run and "words" in run
    gad = next(r for r in saved["runs"] if r["method"] == "gad")
    assert gad["d_acc_warmup"] and gad["gad_steps"] >= 1 and 0 <= gad["disc_test_acc"] <= 100
    if gad_warmup == "sft":  # one SFT epoch of 6 answers at batch 8, then the discriminator-only step
        assert gad["sft_warmup_steps"] == 1 and gad["warmup_steps"] == 1
    else:
        assert gad["sft_warmup_steps"] == 0 and gad["warmup_steps"] >= 1
    assert saved["summary"]["gad"]["seeds"] == 1 and "c2st_points_closer_to_50" in saved["goals"]


def test_demo_style_is_the_demos_persona_and_check_and_a_regex_replaces_the_check():
    from gad.demo.presets import load_preset
    from gad.metrics import style_pass

    spec = load_preset("default")
    system, checker, _ = _load_benchmark().style("demo")
    assert system == spec.teacher_system
    for text in ("Ahoy! Paris be it, matey.", "  ahoy there mateys", "Ahoy! Paris.", "Well, ahoy matey", "matey ahoy"):
        assert checker(text) == style_pass(text, spec.style_starts_with, spec.style_contains), text
    _, by_regex, description = _load_benchmark().style("demo", r"\bparis\b")
    assert by_regex("Ahoy! PARIS.") and not by_regex("Ahoy, matey") and "paris" in description
