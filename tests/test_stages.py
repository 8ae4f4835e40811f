"""gad.training.stages: the stage runner's own checks (the training itself is tested end to end elsewhere)."""

from __future__ import annotations

import logging

from gad.training.config import GADConfig, SeqKDConfig, WarmupConfig
from gad.training.stages import planned_steps, warn_if_too_short


def _config(cls, tmp_path, **values):
    return cls(output_dir=str(tmp_path), student="builtin:tiny-llama", train_file="x.jsonl", **values)


def test_planned_steps_count_prompts_per_step(tmp_path):
    seqkd = _config(SeqKDConfig, tmp_path, per_device_train_batch_size=8, num_train_epochs=3)
    assert planned_steps("seqkd", seqkd, 100) == 38  # ceil(300 / 8)
    warmup = _config(WarmupConfig, tmp_path, per_device_train_batch_size=16, num_generations=4, num_train_epochs=1)
    assert planned_steps("warmup", warmup, 100) == 25  # 4 prompts a step
    assert planned_steps("warmup", _config(WarmupConfig, tmp_path, max_steps=7), 100) == 7


def test_the_papers_learning_rate_on_a_short_run_gets_one_warning(tmp_path, caplog):
    (tmp_path / "warmup" / "student").mkdir(parents=True)
    short = _config(WarmupConfig, tmp_path, max_steps=20)  # the paper's 1e-6
    with caplog.at_level(logging.WARNING, logger="gad.training.stages"):
        warn_if_too_short("warmup", short, 100)
    assert len(caplog.records) == 1 and "learning_rate 1e-06 is the paper's" in caplog.text and "20" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gad.training.stages"):
        warn_if_too_short("warmup", _config(WarmupConfig, tmp_path, max_steps=20, learning_rate=1e-4), 100)
        warn_if_too_short("warmup", _config(WarmupConfig, tmp_path, max_steps=2000), 100)
        gad = GADConfig(output_dir=str(tmp_path), init_from=str(tmp_path / "warmup"), train_file="x", max_steps=5000)
        warn_if_too_short("gad", gad, 100)
    assert not caplog.records  # a raised learning rate, or a run as long as the paper's: nothing to say


def test_a_restarted_stage_killed_before_its_end_is_not_taken_as_finished(tmp_path, tiny_model_dir, tiny_train_file):
    from transformers import TrainerCallback

    from gad.training.stages import run_stage

    class Killed(Exception):
        pass

    class KillAtFirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise Killed

    def config():
        return SeqKDConfig(output_dir=str(tmp_path / "seqkd"), student=str(tiny_model_dir),
                           train_file=str(tiny_train_file), max_steps=2, save_steps=1000, learning_rate=1e-3,
                           per_device_train_batch_size=8, max_prompt_length=32, max_completion_length=16,
                           disable_tqdm=True)  # fmt: skip

    assert run_stage("seqkd", config()).global_step == 2  # finished
    try:
        run_stage("seqkd", config(), overwrite=True, callbacks=[KillAtFirstStep()])  # started again, killed at step 1
    except Killed:
        pass
    resumed = run_stage("seqkd", config(), resume=True)
    assert not resumed.skipped and resumed.global_step == 2  # trained again, not "already finished"
