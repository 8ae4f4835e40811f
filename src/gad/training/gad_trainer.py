"""GADTrainer: TRL's GRPOTrainer with a discriminator that learns at every step.

One step (the paper's Algorithm 1, arXiv:2511.10643), of which TRL already does the sampling, the advantages and
the policy update; this class adds the rest through GRPO's hooks:

1. sample ``num_generations`` responses per prompt (TRL: HF generate or vLLM);
2. reward = the discriminator's raw score of each sample, computed *before* its update (``DiscriminatorReward``);
3. GRPO group-normalised advantages (TRL);
4. one discriminator step on the Bradley-Terry loss, teacher response vs each fresh sample
   (``_generate_and_score_completions``);
5. one student step: GRPO's policy-gradient loss with a k3 KL to the starting policy (TRL), or, in the warmup stage,
   cross-entropy on the teacher response (``compute_loss``); no student step during the first ``d_only_steps``.
"""

from __future__ import annotations

import json
import logging
import random
from collections import deque
from pathlib import Path
from typing import Any

import torch
from trl import GRPOTrainer
from trl.trainer.utils import pad

from gad.layout import DISCRIMINATOR
from gad.metrics import rouge_l
from gad.prepare import teacher_turn_ids
from gad.training.callbacks import CompleteCheckpoints
from gad.training.config import GADConfig
from gad.training.discriminator import Discriminator, DiscriminatorUpdater

logger = logging.getLogger(__name__)

DISCRIMINATOR_STATE = "discriminator_optimizer.pt"
TRAINER_EXTRA_STATE = "gad_state.json"


def _text(completion: Any) -> str:
    """A TRL completion is a string, or a list of messages whose last holds the assistant's text."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


class DiscriminatorReward:
    """GRPO reward function: the discriminator's raw score of each (prompt, student sample).

    It also keeps the batch so that the trainer can update the discriminator on the very samples it just scored.
    """

    __name__ = "discriminator"

    def __init__(self, discriminator: Discriminator, batch_size: int, keep_graph: bool = False):
        self.discriminator = discriminator
        self.batch_size = batch_size
        self.keep_graph = keep_graph
        self.last_batch: dict[str, Any] | None = None

    def __call__(
        self, prompts, completions, teacher_response, teacher_length=None, teacher_finished=None, **kwargs
    ) -> list[float]:
        texts = [_text(c) for c in completions]
        if self.keep_graph and torch.is_grad_enabled():
            scores = self.discriminator.score_with_grad(prompts, texts, batch_size=self.batch_size)
        else:
            scores = self.discriminator.score(prompts, texts, batch_size=self.batch_size)
        self.last_batch = {
            "prompts": prompts,
            "student": texts,
            "teacher": list(teacher_response),
            "teacher_length": list(teacher_length) if teacher_length is not None else None,
            "teacher_finished": list(teacher_finished) if teacher_finished is not None else [True] * len(texts),
            "scores": scores,
        }
        return scores.detach().tolist()


class GADTrainer(CompleteCheckpoints, GRPOTrainer):
    """Trains a student against a discriminator that is trained, at the same time, to tell teacher from student.

    Args:
        model: the student (a checkpoint path, so that TRL can build the KL reference from it).
        args: a :class:`GADConfig` (or :class:`WarmupConfig`).
        discriminator: the :class:`Discriminator` to train; it is moved to the trainer's device.
        train_dataset: rows with ``prompt`` (chat messages), ``teacher_response`` and ``teacher_length``.
        Other keyword arguments go to ``GRPOTrainer`` (``processing_class``, ``callbacks``, ``peft_config``).
    """

    def __init__(self, model, args: GADConfig, discriminator: Discriminator, train_dataset, **kwargs):
        self.reward = DiscriminatorReward(
            discriminator, args.discriminator_batch_size, keep_graph=args.discriminator_fused_update
        )
        super().__init__(model=model, reward_funcs=[self.reward], args=args, train_dataset=train_dataset, **kwargs)
        self.discriminator = discriminator.to(self.accelerator.device)
        discriminator.train_top_layers(args.discriminator_trainable_layers)
        self.discriminator_updater = DiscriminatorUpdater(
            discriminator,
            learning_rate=args.discriminator_learning_rate,
            weight_decay=args.discriminator_weight_decay,
            max_grad_norm=args.discriminator_max_grad_norm,
            loss=args.discriminator_loss,
            batch_size=args.discriminator_batch_size,
            accelerator=self.accelerator,
        )
        self._length_warned = False
        self.replay = ReplayBuffer(args.replay_buffer_size, seed=args.seed)
        self.d_acc_ema: float | None = None

    # -- steps 1-4: sample, score, advantages (TRL), then the discriminator's update --------------------------------
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return output
        batch = self.reward.last_batch
        self.reward.last_batch = None
        stats, first_rows = self._update_discriminator(batch)
        self._log_step_diagnostics(stats.as_metrics(), batch, output, first_rows)
        if self.args.student_objective == "teacher_sft":
            output.update(self._teacher_tensors(batch, first_rows))
        return output

    def _update_discriminator(self, batch):
        """``discriminator_updates`` steps on the fresh samples plus ``discriminator_replay`` replayed ones; returns
        the first step's statistics, measured before any update (held out), and each fresh prompt's first row."""
        prompts, teachers, students = list(batch["prompts"]), list(batch["teacher"]), list(batch["student"])
        scores = batch["scores"]
        replayed = self.replay.sample(self.args.discriminator_replay)
        if replayed:
            old_prompts, old_teachers, old_students = map(list, zip(*replayed, strict=True))
            score = self.discriminator.score_with_grad if scores.requires_grad else self.discriminator.score
            scores = torch.cat(
                [scores, score(old_prompts, old_students, batch_size=self.args.discriminator_batch_size)]
            )
            prompts, teachers, students = prompts + old_prompts, teachers + old_teachers, students + old_students
        unique_prompts, unique_teachers, group, first_rows = _group_by_prompt(prompts, teachers)
        num_fresh = len(batch["student"])
        first = None
        for _ in range(self.args.discriminator_updates):
            stats = self.discriminator_updater.step(
                unique_prompts, unique_teachers, students, group, scores if first is None else None, num_fresh
            )
            first = first or stats
        if self.args.discriminator_replay:
            self.replay.add(zip(batch["prompts"], batch["teacher"], batch["student"], strict=True))
        return first, [row for row in first_rows if row < num_fresh]

    def _log_step_diagnostics(self, d_metrics, batch, output, first_rows) -> None:
        student_len = output["completion_mask"].sum(dim=1).float().mean().item()
        lengths = batch["teacher_length"]
        teacher_len = sum(lengths[i] for i in first_rows) / len(first_rows) if lengths else float("nan")
        metrics = dict(d_metrics)
        metrics["student_len"] = student_len
        metrics["teacher_len"] = teacher_len
        metrics["rouge_l"] = sum(rouge_l(s, t) for s, t in zip(batch["student"], batch["teacher"], strict=True)) / len(
            batch["student"]
        )
        names = sorted(metrics)
        values = torch.tensor([metrics[n] for n in names], dtype=torch.float32, device=self.accelerator.device)
        values = self.accelerator.reduce(values, reduction="mean")
        metrics = dict(zip(names, values.tolist(), strict=True))
        metrics["len_ratio"] = metrics["student_len"] / max(metrics["teacher_len"], 1e-9)
        if self.args.student_gate_accuracy is not None:
            smoothing = self.args.gate_smoothing if self.d_acc_ema is not None else 0.0
            self.d_acc_ema = smoothing * (self.d_acc_ema or 0.0) + (1 - smoothing) * metrics["d_acc"]
            metrics["d_acc_ema"] = self.d_acc_ema
            metrics["student_gate_open"] = float(not self._gate_closed())
        for name, value in metrics.items():
            self._metrics["train"][name].append(value)
        self._warn_on_length(metrics)

    def _warn_on_length(self, metrics: dict[str, float]) -> None:
        ratio = self.args.length_warning_ratio
        if ratio is None:
            return
        too_long = metrics["len_ratio"] > ratio
        if too_long and not self._length_warned:
            logger.warning(
                "step %d: the student's mean response length (%.0f tokens) is %.1fx the teacher's (%.0f), above "
                "length_warning_ratio=%.1f: a sign of reward hacking; check samples and the judge score",
                self.state.global_step,
                metrics["student_len"],
                metrics["len_ratio"],
                metrics["teacher_len"],
                ratio,
            )
        self._length_warned = too_long

    # -- step 5: the student's update ------------------------------------------------------------------------------
    def _gate_closed(self) -> bool:
        threshold = self.args.student_gate_accuracy
        return threshold is not None and (self.d_acc_ema is None or self.d_acc_ema < threshold)

    def training_step(self, model, inputs, num_items_in_batch):
        if self.state.global_step < self.args.d_only_steps or self._gate_closed():
            # Discriminator-only step (warmup's first steps, or the gate is closed): sample and update the
            # discriminator, leave every student gradient unset so the optimizer step leaves the student untouched.
            model.train()
            self._prepare_inputs(inputs)
            self._step += 1
            return torch.zeros((), device=self.accelerator.device)
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.student_objective == "teacher_sft":
            return self._teacher_sft_loss(model, inputs)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _teacher_tensors(self, batch, first_rows) -> dict[str, torch.Tensor]:
        """Teacher turn tokens for the warmup's cross-entropy, one row per prompt (weight 0 on repeats)."""
        device = self.accelerator.device
        turns = zip(batch["prompts"], batch["teacher"], batch["teacher_finished"], strict=True)
        ids = [torch.tensor(teacher_turn_ids(self._tokenizer, p, t, f)[1]) for p, t, f in turns]
        mask = [torch.ones_like(x) for x in ids]
        weight = torch.zeros(len(ids), device=device)
        weight[first_rows] = 1.0
        return {
            "teacher_ids": pad(ids, padding_value=self._tokenizer.pad_token_id, padding_side="right").to(device),
            "teacher_mask": pad(mask, padding_value=0, padding_side="right").to(device),
            "teacher_weight": weight,
        }

    def _teacher_sft_loss(self, model, inputs) -> torch.Tensor:
        keep = inputs["teacher_weight"] > 0
        weight = 1.0
        if not keep.any():  # this micro-batch holds only repeats: a zero-weighted row keeps the graph uniform
            keep = torch.zeros_like(keep)
            keep[0] = True
            weight = 0.0
        prompt_ids, prompt_mask = inputs["prompt_ids"][keep], inputs["prompt_mask"][keep]
        teacher_ids, teacher_mask = inputs["teacher_ids"][keep], inputs["teacher_mask"][keep]
        input_ids = torch.cat([prompt_ids, teacher_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, teacher_mask], dim=1)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        logits = logits[:, prompt_ids.size(1) - 1 : -1].float()
        per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), teacher_ids, reduction="none")
        loss = (per_token * teacher_mask).sum() / teacher_mask.sum().clamp(min=1)
        if weight:
            self._metrics["train"]["sft_loss"].append(self.accelerator.gather(loss.detach()).mean().item())
        # GRPOTrainer declares its losses pre-scaled for gradient accumulation; so is this one.
        return weight * loss / self.current_gradient_accumulation_steps

    # -- checkpoints hold the discriminator and its optimizer next to the student --------------------------------
    def _save_checkpoint_extras(self, checkpoint: Path) -> None:
        folder = checkpoint / DISCRIMINATOR
        self.discriminator.save_pretrained(folder)
        torch.save(self.discriminator_updater.state_dict(), folder / DISCRIMINATOR_STATE)
        extra = {"d_acc_ema": self.d_acc_ema, "replay": self.replay.state_dict()}
        (folder / TRAINER_EXTRA_STATE).write_text(json.dumps(extra))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        folder = Path(checkpoint) / DISCRIMINATOR
        restored = Discriminator.from_pretrained(folder, max_length=self.discriminator.max_length)
        self.discriminator.model.load_state_dict(restored.model.state_dict())
        state = torch.load(folder / DISCRIMINATOR_STATE, map_location=self.accelerator.device, weights_only=True)
        self.discriminator_updater.load_state_dict(state)
        extra_path = folder / TRAINER_EXTRA_STATE
        if extra_path.exists():
            extra = json.loads(extra_path.read_text())
            self.d_acc_ema = extra["d_acc_ema"]
            self.replay.load_state_dict(extra["replay"])
        logger.info("resumed the discriminator and its optimizer from %s", folder)


def _group_by_prompt(prompts: list, teachers: list[str]) -> tuple[list, list[str], list[int], list[int]]:
    """Unique (prompt, teacher) pairs in order of appearance, each sample's group index, and each group's first row."""
    index: dict[str, int] = {}
    unique_prompts, unique_teachers, group, first_rows = [], [], [], []
    for row, (prompt, teacher) in enumerate(zip(prompts, teachers, strict=True)):
        key = json.dumps([prompt, teacher], sort_keys=True)
        if key not in index:
            index[key] = len(unique_prompts)
            unique_prompts.append(prompt)
            unique_teachers.append(teacher)
            first_rows.append(row)
        group.append(index[key])
    return unique_prompts, unique_teachers, group, first_rows


class ReplayBuffer:
    """Recent (prompt, teacher response, student sample) triples for the discriminator to revisit."""

    def __init__(self, capacity: int, seed: int = 0):
        self.items: deque = deque(maxlen=capacity)
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, triples) -> None:
        self.items.extend(tuple(t) for t in triples)

    def sample(self, k: int) -> list[tuple]:
        return self.rng.sample(list(self.items), min(k, len(self.items))) if k else []

    def state_dict(self) -> dict:
        return {"items": list(self.items), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.items.clear()
        self.items.extend(tuple(t) for t in state["items"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
