"""Checkpoints survive a crash at any moment of a save: the newer one is marked complete before any rotation
deletes an older one (``save_total_limit=1`` is the worst case: only one checkpoint is ever kept)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import transformers.modeling_utils

from gad.layout import DISCRIMINATOR, StageLayout
from gad.training.config import SeqKDConfig, WarmupConfig
from gad.training.gad_trainer import DISCRIMINATOR_STATE
from gad.training.stages import build_trainer, load_stage_data

SMALL = dict(max_prompt_length=32, max_completion_length=16, logging_steps=1, seed=0, max_steps=1, save_steps=1,
             save_total_limit=1, disable_tqdm=True)  # fmt: skip


class Crash(Exception):
    """Stands for kill -9 at one write or deletion of a save: everything before it is on disk, nothing after."""


def _patch_file_operations(monkeypatch, on_event) -> None:
    """Route every write and deletion a save makes through ``on_event(name)`` (which may raise :class:`Crash`)."""
    targets = [
        (torch, "save"),  # optimizer, scheduler, RNG state, the discriminator's optimizer
        (transformers.modeling_utils, "safe_save_file"),  # model weights
        (shutil, "rmtree"),  # rotation
        (Path, "write_text"),  # markers and small JSON states
    ]
    for owner, name in targets:
        original = getattr(owner, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            on_event(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)


@pytest.mark.parametrize("stage", ["seqkd", "warmup"])
def test_a_crash_at_any_moment_of_a_save_leaves_a_complete_checkpoint(stage, tmp_path, tiny_model_dir,
                                                                       tiny_train_file, monkeypatch):  # fmt: skip
    common = dict(output_dir=str(tmp_path / stage), student=str(tiny_model_dir), train_file=str(tiny_train_file))
    if stage == "seqkd":
        config = SeqKDConfig(**common, per_device_train_batch_size=8, **SMALL)
    else:
        config = WarmupConfig(**common, per_device_train_batch_size=8, num_generations=4, d_only_steps=0, **SMALL)
    data = load_stage_data(config)
    trainer = build_trainer(stage, config, data.student, data.tokenizer, data.rows, data.lengths)
    trainer.train()
    layout = StageLayout(Path(config.output_dir))
    assert layout.latest_checkpoint() == layout.checkpoint(1)

    events: list[str] = []
    with monkeypatch.context() as patch:
        _patch_file_operations(patch, events.append)
        trainer.state.global_step = 2
        trainer._save_checkpoint(trainer.model, None)
    assert layout.checkpoints() == [layout.checkpoint(2)]  # checkpoint-1 was rotated away after 2 was complete
    assert "rmtree" in events and len(events) >= 5

    for moment in range(len(events)):
        count = iter(range(len(events) + 1))

        def crash_at(name, moment=moment, count=count):
            if next(count) == moment:
                raise Crash(name)

        step = 3 + moment
        with monkeypatch.context() as patch:
            _patch_file_operations(patch, crash_at)
            trainer.state.global_step = step
            with pytest.raises(Crash):
                trainer._save_checkpoint(trainer.model, None)
        latest = layout.latest_checkpoint()
        assert latest is not None, f"no complete checkpoint after a crash at {events[moment]} (event {moment})"
        assert (latest / "model.safetensors").is_file() and (latest / "optimizer.pt").is_file()
        if stage == "warmup":
            assert (latest / DISCRIMINATOR / DISCRIMINATOR_STATE).is_file()
