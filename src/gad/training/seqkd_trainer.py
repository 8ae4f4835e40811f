"""SeqKDTrainer: TRL's SFTTrainer on the teacher's answers, with gad's complete-before-rotate checkpoints."""

from __future__ import annotations

from trl import SFTTrainer

from gad.training.callbacks import CompleteCheckpoints


class SeqKDTrainer(CompleteCheckpoints, SFTTrainer):
    """Supervised fine-tuning of the student on the teacher's responses (the SeqKD baseline)."""
