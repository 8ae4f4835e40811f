"""Trainer callbacks every stage uses: metrics.jsonl, checkpoint completion markers, NaN guard."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

from gad.errors import GadError
from gad.layout import COMPLETE_MARKER, StageLayout


class MetricsFile(TrainerCallback):
    """Appends every log step to ``OUTPUT_DIR/metrics.jsonl`` as one JSON object with ``step``, ``epoch``, metrics.

    On resume, lines logged after the checkpoint (by the run that was killed) are dropped first, so the file reads
    as one uninterrupted run.
    """

    def __init__(self, path: str | Path, stage: str, resume_step: int | None = None):
        self.path = Path(path)
        self.stage = stage
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
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


class CheckpointMarker(TrainerCallback):
    """Marks a checkpoint complete once everything in it is written; `--resume` only trusts marked checkpoints, so a
    run killed in the middle of saving resumes from the checkpoint before."""

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = StageLayout(Path(args.output_dir)).checkpoint(state.global_step)
        if folder.is_dir():
            (folder / COMPLETE_MARKER).write_text(json.dumps({"step": state.global_step}))


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
