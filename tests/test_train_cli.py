"""`gad train` end to end through the CLI: all three stages, plain-transformers loading, kill -9 and --resume,
and one-line errors for bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gad.cli import main
from gad.errors import GadError
from gad.training.callbacks import NanGuard

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "tiny-cpu.yaml"
GAD = Path(sys.executable).parent / "gad"


def test_all_three_stages_write_plain_hugging_face_folders(tiny_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    for stage in ("seqkd", "warmup", "gad"):
        folder = tiny_run / stage
        assert (folder / "config.yaml").exists() and (folder / "metrics.jsonl").exists()
        assert (folder / "checkpoint-2" / "gad_complete.json").exists()
        tokenizer = AutoTokenizer.from_pretrained(folder / "student")
        model = AutoModelForCausalLM.from_pretrained(folder / "student")
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is a cat?"}], add_generation_prompt=True, return_tensors="pt",
            return_dict=True,
        )  # fmt: skip
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
        assert out.shape[1] > prompt["input_ids"].shape[1]
        if stage != "seqkd":
            disc = AutoModelForSequenceClassification.from_pretrained(folder / "discriminator")
            assert disc.config.num_labels == 1
            assert torch.isfinite(disc(**tokenizer("text", return_tensors="pt")).logits).all()
            assert (folder / "checkpoint-2" / "discriminator" / "config.json").exists()

    gad_metrics = [json.loads(line) for line in (tiny_run / "gad" / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in gad_metrics if "reward" in row]
    assert [row["step"] for row in logged] == [2, 4]
    for key in ("d_loss", "d_acc", "d_score_gap", "kl", "entropy", "reward_std", "rouge_l", "len_ratio"):
        assert all(math.isfinite(row[key]) for row in logged), key
    resolved = (tiny_run / "gad" / "config.yaml").read_text()
    assert f"init_from: {tiny_run / 'warmup'}" in resolved and "beta: 0.001" in resolved


def test_a_run_killed_with_sigkill_resumes_from_its_last_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    command = [str(GAD), "train", "--stage", "warmup", "--config", str(RECIPE), f"run_dir={run}", "max_steps=24",
               "save_steps=2", "logging_steps=1", "d_only_steps=1"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((run / "warmup").glob("checkpoint-4/gad_complete.json")):
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run / "warmup" / "student").exists()

    result = subprocess.run([*command, "--resume"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stderr
    rows = [json.loads(line) for line in (run / "warmup" / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "d_loss" in row]
    assert steps == list(range(1, 25))  # each step logged once, the killed run's extra lines dropped
    assert (run / "warmup" / "student" / "config.json").exists()


def _error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def test_bad_input_gives_one_clear_line_and_exit_code_2(tmp_path, capsys):
    base = ["train", "--stage", "seqkd", "--config", str(RECIPE), f"run_dir={tmp_path / 'run'}"]
    assert "student model folder not found: /no/such/model" in _error_line(capsys, [*base, "student=/no/such/model"])
    line = _error_line(capsys, [*base, "lerning_rate=1e-5"])
    assert "unknown key 'lerning_rate'" in line and "did you mean 'learning_rate'" in line
    assert "key 'num_train_epochs' must be a number, got 'many'" in _error_line(
        capsys, [*base, "num_train_epochs=many"]
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "no usable rows" in _error_line(capsys, [*base, f"train_file={empty}"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "response": "yo"}\n{"prompt": 3, "response": "x"}\n')
    line = _error_line(capsys, [*base, f"train_file={bad}"])
    assert str(bad) in line and "line 2" in line and "field 'prompt'" in line
    assert "recipe not found" in _error_line(capsys, ["train", "--stage", "seqkd", "--config", "nope.yaml"])
    assert "unknown stage 'sft'" in _error_line(capsys, ["train", "--stage", "sft", "--config", str(RECIPE)])


def test_an_existing_run_is_not_overwritten_by_accident(tmp_path, capsys):
    from gad.layout import StageLayout
    from gad.training.stages import _checkpoint_to_resume

    stage = tmp_path / "run" / "seqkd"
    (stage / "checkpoint-2").mkdir(parents=True)
    base = ["train", "--stage", "seqkd", "--config", str(RECIPE), f"run_dir={tmp_path / 'run'}"]
    assert "pass --resume to continue it, --overwrite" in _error_line(capsys, base)
    # --resume with only an incomplete checkpoint (killed while saving) starts the stage again
    assert _checkpoint_to_resume(StageLayout(stage), True, overwrite=False) is None
    assert not (stage / "checkpoint-2").exists()


def test_resume_skips_finished_stages_of_a_pipeline(tiny_run, capsys):
    from conftest import TINY_RUN_OVERRIDES

    argv = ["train", "--stage", "seqkd,warmup,gad", "--config", str(RECIPE), f"run_dir={tiny_run}", "--resume",
            *TINY_RUN_OVERRIDES]  # fmt: skip
    before = (tiny_run / "gad" / "student" / "model.safetensors").stat().st_mtime
    assert main(argv) == 0
    assert (tiny_run / "gad" / "student" / "model.safetensors").stat().st_mtime == before


def test_nan_loss_stops_the_run_with_advice():
    class State:
        global_step = 7

    with pytest.raises(GadError, match="loss became nan at step 7; lower learning_rate"):
        NanGuard().on_log(None, State(), None, logs={"loss": float("nan")})
    NanGuard().on_log(None, State(), None, logs={"loss": 1.0})


def test_print_config_shows_the_resolved_stage(capsys):
    assert main(["train", "--stage", "warmup", "--config", str(RECIPE), "--print-config", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert "student_objective: teacher_sft" in out and "seed: 3" in out and "d_only_steps: 4" in out


def test_a_mistake_in_a_later_stage_stops_the_pipeline_before_the_first_stage_trains(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--stage", "seqkd,warmup,gad", "--config", str(RECIPE), f"run_dir={run}", "gad.num_generations=3"]
    assert "divisible by" in _error_line(capsys, argv)  # TRL's own batch check, for the gad stage
    assert not run.exists()  # seqkd did not start


def test_print_config_works_before_earlier_stages_exist(tmp_path, capsys):
    argv = ["train", "--stage", "gad", "--config", str(RECIPE), f"run_dir={tmp_path / 'run'}", "--print-config"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "stage: gad" in printed and f"init_from: {tmp_path / 'run' / 'warmup'}" in printed
    # without --print-config the missing warmup folder is still an error, when the gad stage starts
    assert "init_from folder not found" in _error_line(capsys, argv[:-1])


def test_a_pipeline_with_student_on_the_command_line_runs_gad_from_its_own_warmup(tmp_path, tiny_model_dir, capsys):
    run = tmp_path / "run"
    argv = ["train", "--stage", "seqkd,warmup,gad", "--config", str(RECIPE), f"run_dir={run}",
            f"student={tiny_model_dir}", "--print-config"]  # fmt: skip
    assert main(argv) == 0
    gad = capsys.readouterr().out.split("stage: gad")[1]
    assert f"init_from: {run / 'warmup'}" in gad and f"student: {run / 'warmup' / 'student'}" in gad


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learning_rate=-1", "learning_rate must be positive"),
        ("learning_rate=0", "learning_rate must be positive"),
        ("per_device_train_batch_size=0", "per_device_train_batch_size must be at least 1"),
        ("num_train_epochs=0", "num_train_epochs must be positive"),
        ("max_steps=0", "max_steps must be positive"),
        ("seqkd.save_steps=-5", "save_steps must be positive"),
    ],
)
def test_bad_numbers_are_one_line_before_anything_is_written(tmp_path, capsys, override, message):
    run = tmp_path / "run"
    argv = ["train", "--stage", "seqkd", "--config", str(RECIPE), f"run_dir={run}", override]
    if override.startswith("num_train_epochs"):
        argv.append("seqkd.max_steps=-1")
    assert message in _error_line(capsys, argv)
    assert not run.exists()


def test_a_model_folder_without_weights_is_one_line_before_anything_is_written(tmp_path, tiny_model_dir, capsys):
    import shutil

    empty = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, empty)
    for weights in empty.glob("*.safetensors"):
        weights.unlink()
    run = tmp_path / "run"
    for stage, key in (("seqkd", "student"), ("warmup", "warmup.discriminator")):
        argv = ["train", "--stage", stage, "--config", str(RECIPE), f"run_dir={run}", f"{key}={empty}"]
        assert f"{empty} has no weights" in _error_line(capsys, argv), stage
        assert not (run / stage).exists()


def test_a_full_disk_is_one_line_that_says_how_to_continue(tmp_path, capsys, monkeypatch):
    import errno

    import gad.training.stages

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "seqkd" / "config.yaml"))

    monkeypatch.setattr(gad.training.stages, "write_config", full)
    line = _error_line(capsys, ["train", "--stage", "seqkd", "--config", str(RECIPE), f"run_dir={tmp_path / 'run'}"])
    assert line.startswith("error: the disk is full writing") and "config.yaml" in line and "--resume" in line
    from gad.cli import is_disk_full

    assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing "
                                     "file data/0: file write failed"))  # fmt: skip
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
