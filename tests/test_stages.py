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
