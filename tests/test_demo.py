"""`gad demo`: the preset files, the persona check and the verdict, and the whole pipeline on the tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from gad.cli import main
from gad.demo.presets import PRESETS, load_preset
from gad.demo.summary import goal_checks
from gad.errors import GadError
from gad.metrics import style_pass
from gad.models import first_layers
from gad.training.recipe import resolve_stage


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_resolves_into_the_three_stage_configs(name, tmp_path):
    spec = load_preset(name)
    assert spec.n_train > 0 and spec.n_eval > 0 and spec.teacher_system
    recipe = {**spec.train, "student": "student", "train_file": "train.jsonl", "run_dir": str(tmp_path)}
    (tmp_path / "warmup").mkdir()
    for stage in ("seqkd", "warmup", "gad"):
        config = resolve_stage(recipe, stage, source=name)
        assert config.output_dir == str(tmp_path / stage)
    assert config.init_from == str(tmp_path / "warmup")  # GAD starts from the warmup's student and discriminator


def test_unknown_preset_and_unknown_keys_fail_with_one_line(tmp_path):
    with pytest.raises(GadError, match="preset not found"):
        load_preset("no-such-preset")
    bad = tmp_path / "demo-bad.yaml"
    bad.write_text("demo: {teacher: x, colour: red}\ntrain: {}\n")
    with pytest.raises(GadError, match="colour"):
        load_preset(str(bad))


def test_persona_check():
    assert style_pass("  Ahoy! Paris be the capital, matey.", "Ahoy", "matey")
    assert style_pass("ahoy there MATEY", "Ahoy", "matey")
    assert not style_pass("Paris is the capital. Ahoy, matey!", "Ahoy", "matey")
    assert not style_pass("Ahoy! Paris.", "Ahoy", "matey")
    assert style_pass("anything", None, None)


def test_goal_checks_compare_gad_with_the_initial_student():
    rows = [
        {"model": "teacher", "style": 90.0, "disc_score": 2.0},
        {"model": "initial", "style": 0.0, "rouge_l": 0.1, "ngram_f1_2": 0.05, "len_ratio": 3.0, "disc_score": -1.0},
        {"model": "gad", "style": 70.0, "rouge_l": 0.3, "ngram_f1_2": 0.02, "len_ratio": 0.5, "disc_score": 1.0},
    ]
    checks = {c["metric"]: c["closer"] for c in goal_checks(rows)}
    # len ratio 3.0 -> 0.5: |log 0.5| < |log 3|, closer; F1-2 fell: not closer
    assert checks == {"persona %": True, "ROUGE-L": True, "F1-2": False, "len/teacher": True, "D score": True}
    rows[2]["style"] = 100.0  # overshooting the teacher's 90 % is still closer than 0 %; 200 % would not be
    assert goal_checks(rows)[0]["closer"]
    rows[0]["style"] = 30.0
    assert not goal_checks(rows)[0]["closer"]  # |100 - 30| > |0 - 30|


def test_derived_discriminator_keeps_the_first_layers(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoConfig

    from gad.training.discriminator import Discriminator

    monkeypatch.setenv("GAD_CACHE_DIR", str(tmp_path))
    folder = first_layers(tiny_model_dir, 2)
    assert AutoConfig.from_pretrained(folder).num_hidden_layers == 2
    assert first_layers(tiny_model_dir, 2) == folder  # built once
    disc = Discriminator.from_pretrained(folder)
    scores = disc.score([[{"role": "user", "content": "Hi?"}]], ["Ahoy!"])
    assert scores.shape == (1,)
    with pytest.raises(GadError, match="number of layers"):
        first_layers(tiny_model_dir, 9)


def test_tiny_demo_runs_the_whole_pipeline_through_the_real_interfaces(tmp_path, capsys, monkeypatch):
    import torch

    threads = torch.get_num_threads()  # the demo sets it (and OMP_NUM_THREADS); leave both as they were
    monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
    monkeypatch.setenv("MKL_NUM_THREADS", str(threads))
    out = tmp_path / "demo"
    try:
        args = ["demo", "--preset", "tiny", "--out", str(out), "--quiet", "--threads", str(threads), "--seed", "3"]
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    printed = captured.out
    assert "'loss'" not in printed and "examples/s" not in captured.err, "--quiet printed training logs or bars"
    for phase in ("models", "teacher", "seqkd", "warmup", "gad", "eval", "report"):
        assert f" {phase}: " in printed
    assert "Report:" in printed and "Wall time" in printed

    train = [json.loads(line) for line in (out / "teacher" / "train.jsonl").read_text().splitlines()]
    assert len(train) == 8 and all(row["teacher_response"] for row in train)
    assert (out / "teacher" / "cache.sqlite").is_file()
    for folder in ("seqkd/student", "warmup/student", "warmup/discriminator", "gad/student", "gad/discriminator"):
        assert (out / folder / "config.json").is_file(), folder
    eval_data = json.loads((out / "eval" / "eval.json").read_text())
    assert eval_data["order"] == ["teacher", "initial", "seqkd", "gad"]
    assert "disc_score" in eval_data["results"]["gad"]["demo-eval"]

    summary = json.loads((out / "demo.json").read_text())
    assert [row["model"] for row in summary["table"]] == ["teacher", "initial", "seqkd", "gad"]
    assert summary["seed"] == summary["teacher_seed"] == 3
    for stage in ("seqkd", "warmup", "gad"):
        assert yaml.safe_load((out / stage / "config.yaml").read_text())["seed"] == 3, stage
    assert {c["metric"] for c in summary["gad_closer_than_initial"]} >= {"persona %", "ROUGE-L", "D score"}
    assert set(summary["phases_seconds"]) == {"models", "teacher", "seqkd", "warmup", "gad", "eval", "report"}
    report = (out / "report.html").read_text()
    assert "Demo summary" in report and "persona %" in report and "Training curves" in report
    assert "Demo summary" in (out / "report.md").read_text()
    assert not serve_processes(), "a teacher server outlived the demo"


def serve_processes() -> list[str]:
    """Command lines of running `gad.serve` processes started from this test session (same GAD_CACHE_DIR)."""
    mine = f"GAD_CACHE_DIR={os.environ['GAD_CACHE_DIR']}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if "gad.serve" in cmdline and mine in environ:
            found.append(cmdline)
    return found
