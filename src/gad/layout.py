"""Where everything of a run lives, named in one place (the stage runner, callbacks, trainers, selection, report and
demo take their paths from here).

::

    RUN/                      RunLayout(RUN)
      seqkd/ warmup/ gad/     StageLayout: one per training stage
        config.yaml             the resolved config (every default included)
        metrics.jsonl           one JSON object per logged step
        checkpoint-N/           the student at its root, discriminator/ beside it, gad_complete.json when complete
        student/                the final student (a plain Hugging Face folder)
        discriminator/          the final discriminator (warmup and gad)
        gad_finished.json       written last: the stage ran to the end
      eval/                   `gad eval` output (eval.json, answers/MODEL/SET.jsonl, ratings/)
      selection-eval/         `gad eval --select RUN`: the checkpoints' evaluation; selection.json beside it
      best -> gad/checkpoint-N  the checkpoint `gad eval --select` chose
      report.html             `gad report`
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

STAGE_NAMES = ("seqkd", "warmup", "gad")
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STUDENT = "student"
DISCRIMINATOR = "discriminator"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
FINISHED_MARKER = "gad_finished.json"
COMPLETE_MARKER = "gad_complete.json"  # inside a checkpoint: everything in it is written
SELECTION_EVAL = "selection-eval"


@dataclass(frozen=True)
class StageLayout:
    """The output folder of one training stage."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def student(self) -> Path:
        return self.root / STUDENT

    @property
    def discriminator(self) -> Path:
        return self.root / DISCRIMINATOR

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def finished_marker(self) -> Path:
        return self.root / FINISHED_MARKER

    def checkpoint(self, step: int) -> Path:
        return self.root / f"checkpoint-{step}"

    def checkpoints(self, *, complete_only: bool = False) -> list[Path]:
        """Checkpoint folders by step, oldest first (``complete_only``: those whose save finished)."""
        if not self.root.is_dir():
            return []
        found = [
            (int(match.group(1)), path)
            for path in self.root.iterdir()
            if (match := CHECKPOINT_PATTERN.match(path.name)) and path.is_dir()
        ]
        return [path for _, path in sorted(found) if not complete_only or (path / COMPLETE_MARKER).exists()]

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        complete = self.checkpoints(complete_only=True)
        return complete[-1] if complete else None


def checkpoint_step(folder: str | Path) -> int | None:
    """N for a ``checkpoint-N`` folder, else None."""
    match = CHECKPOINT_PATTERN.match(Path(folder).name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class RunLayout:
    """A run folder: the stages' folders plus evaluation, selection and report."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    def stage(self, name: str) -> StageLayout:
        return StageLayout(self.root / name)

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def report(self) -> Path:
        return self.root / "report.html"


def answers_file(eval_dir: str | Path, model: str, set_name: str) -> Path:
    """Where `gad eval` writes one model's answers to one prompt set."""
    return Path(eval_dir) / "answers" / model / f"{set_name}.jsonl"


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a ``metrics.jsonl``; an unreadable line (torn by a crash, or a run still writing) is skipped with a
    warning."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            logger.warning("%s, line %d: skipping an unreadable line (cut by a crash?)", path, number)
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows
