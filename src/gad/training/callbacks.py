"""Trainer callbacks every stage uses: metrics.jsonl, checkpoint completion markers, NaN guard."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import rotate_checkpoints

from gad.errors import GadError
from gad.layout import COMPLETE_MARKER, StageLayout, read_metrics


class MetricsFile(TrainerCallback):
    """Appends every log step to ``OUTPUT_DIR/metrics.jsonl`` as one JSON object with ``step``, ``epoch``, metrics.

    On resume, lines logged after the checkpoint (by the run that was killed) are dropped first, so the file reads
    as one uninterrupted run. Only the main process (``main_process``) touches the file: the logged values are
    already averaged over every process.
    """

    def __init__(self, path: str | Path, stage: str, resume_step: int | None = None, *, main_process: bool = True):
        self.path = Path(path)
        self.stage = stage
        if not main_process:
            return
        if resume_step is not None and self.path.exists():
            kept = [row for row in read_metrics(self.path) if row["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, "stage": self.stage}
        row.update({k: _plain(v) for k, v in logs.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


class NanGuard(TrainerCallback):
    """Stops the run with a clear message when the student's loss becomes NaN or infinite."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, float) and not math.isfinite(loss):
            raise GadError(
                f"the student's loss became {loss} at step {state.global_step}; lower learning_rate or max_grad_norm "
                f"and resume from the last checkpoint with --resume"
            )


class CompleteCheckpoints:
    """Trainer mixin: a checkpoint is marked complete only once everything in it is written, and older checkpoints
    are deleted (``save_total_limit``) only after that, so a run killed at any moment of a save still has a complete
    checkpoint to resume from. ``--resume`` trusts only marked checkpoints.

    Hugging Face's own rotation runs inside ``_save_checkpoint`` before a subclass can add its files (the
    discriminator); it is held back here and run at the end. Subclasses add files in :meth:`_save_checkpoint_extras`.
    """

    def _save_checkpoint(self, model, trial):
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # no rotation until the new checkpoint is complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        # Every process writes its own part (its RNG state; its shard of a sharded model): complete means all of them.
        self.accelerator.wait_for_everyone()
        if not self.args.should_save:
            return
        run_dir = self._get_output_dir(trial=trial)
        folder = StageLayout(Path(run_dir)).checkpoint(self.state.global_step)
        self._save_checkpoint_extras(folder)
        (folder / COMPLETE_MARKER).write_text(json.dumps({"step": self.state.global_step}))
        rotate_checkpoints(run_dir, save_total_limit=limit, best_model_checkpoint=self.state.best_model_checkpoint,
                           use_mtime=True)  # fmt: skip

    def _save_checkpoint_extras(self, folder: Path) -> None:
        """Write what the subclass keeps beside the student (called on the saving process only)."""


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
