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

Safeguards and diagnostics, all off by default (see :class:`GADConfig`): a bounded reward (``reward_transform``),
skipping the update of a discriminator that wins every pair (``discriminator_skip_accuracy``), flags and one-line
warnings when its accuracy collapses or saturates or the student's length drifts, its accuracy on held-out
prompts (``d_acc_val``), and a regular-expression oracle reward to check the RL loop itself (``reward_source``).
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import deque
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType
from transformers import GenerationConfig
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import pad

from gad.data import load_training_rows
from gad.errors import GadError
from gad.layout import DISCRIMINATOR
from gad.metrics import rouge_l
from gad.prepare import teacher_turn_ids, truncate_rows
from gad.training.callbacks import CompleteCheckpoints
from gad.training.config import ZERO3_UNSUPPORTED, GADConfig, discriminator_compute
from gad.training.discriminator import (
    REWARD_TRANSFORMS,
    TEACHER_RELATIVE_TRANSFORMS,
    Discriminator,
    DiscriminatorStats,
    DiscriminatorUpdater,
    evaluate_pairs,
    full_model_state_dict,
    load_full_model_state_dict,
    pad_passes,
    shard_discriminator,
)

logger = logging.getLogger(__name__)

DISCRIMINATOR_STATE = "discriminator_optimizer.pt"
TRAINER_EXTRA_STATE = "gad_state.json"


def _text(completion: Any) -> str:
    """A TRL completion is a string, or a list of messages whose last holds the assistant's text."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def style_matches(pattern: re.Pattern, texts: list[str]) -> list[float]:
    """1.0 for each text in which ``pattern`` is found (``re.search``), else 0.0."""
    return [float(pattern.search(text) is not None) for text in texts]


class DiscriminatorReward:
    """GRPO reward function: the discriminator's raw score of each (prompt, student sample), or ``transform`` of it
    (a name in ``REWARD_TRANSFORMS``; those in ``TEACHER_RELATIVE_TRANSFORMS`` also score each prompt's teacher
    answer). With ``oracle``, a regular expression, the reward is 1 for a sample that matches it and 0 otherwise: a
    sanity check of the RL loop, not GAD; the discriminator still scores the batch.

    It also keeps the batch, with the raw scores, so that the trainer can update the discriminator on the very samples
    it just scored.
    """

    __name__ = "discriminator"

    def __init__(
        self,
        discriminator: Discriminator,
        batch_size: int,
        keep_graph: bool = False,
        transform: str = "raw",
        oracle: str | None = None,
    ):
        self.discriminator = discriminator
        self.batch_size = batch_size
        self.keep_graph = keep_graph
        self.transform = REWARD_TRANSFORMS[transform]
        self.vs_teacher = transform in TEACHER_RELATIVE_TRANSFORMS
        self.oracle = re.compile(oracle) if oracle is not None else None
        # Set by the trainer when the discriminator is sharded: called with the number of sequences this process
        # scored, it pads with forward passes up to the busiest process's (every process gathers in every pass).
        self.even_out = None
        if self.oracle is not None:
            self.__name__ = "style_regex"  # TRL names the reward's metrics (rewards/NAME/mean) after it
        self.last_batch: dict[str, Any] | None = None

    def __call__(
        self, prompts, completions, teacher_response, teacher_length=None, teacher_finished=None, **kwargs
    ) -> list[float]:
        texts = [_text(c) for c in completions]
        if self.keep_graph and torch.is_grad_enabled():
            scores = self.discriminator.score_with_grad(prompts, texts, batch_size=self.batch_size)
        else:
            scores = self.discriminator.score(prompts, texts, batch_size=self.batch_size)
        if self.even_out is not None:
            self.even_out(len(texts))
        self.last_batch = {
            "prompts": prompts,
            "student": texts,
            "teacher": list(teacher_response),
            "teacher_length": list(teacher_length) if teacher_length is not None else None,
            "teacher_finished": list(teacher_finished) if teacher_finished is not None else [True] * len(texts),
            "scores": scores,
        }
        if self.oracle is not None:
            return style_matches(self.oracle, texts)
        return self.transform(scores.detach(), self._teacher_scores(prompts, teacher_response)).tolist()

    def _teacher_scores(self, prompts, teachers) -> torch.Tensor | None:
        """Each sample's teacher answer's score, each answer scored once; None when the transform needs none."""
        if not self.vs_teacher:
            return None
        unique_prompts, unique_teachers, group, _ = _group_by_prompt(list(prompts), list(teachers))
        scores = self.discriminator.score(unique_prompts, unique_teachers, batch_size=self.batch_size)
        if self.even_out is not None:
            self.even_out(len(unique_teachers))
        return scores[torch.as_tensor(group, device=scores.device)]


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
            discriminator,
            args.discriminator_batch_size,
            keep_graph=args.discriminator_fused_update,
            transform=args.reward_transform,
            oracle=args.style_regex if args.reward_source == "style_regex" else None,
        )
        train_dataset, held_out = _hold_out_validation(train_dataset, args)
        super().__init__(model=model, reward_funcs=[self.reward], args=args, train_dataset=train_dataset, **kwargs)
        self.discriminator = discriminator.to(self.accelerator.device)
        discriminator.train_top_layers(args.discriminator_trainable_layers)
        bf16, checkpointing = discriminator_compute(
            args, student_bf16=bool(args.bf16), student_checkpointing=_student_checkpointing(args, self.accelerator)
        )
        discriminator.use_bf16(bf16)
        if checkpointing:
            discriminator.enable_activation_checkpointing()  # before sharding: FSDP2 wraps the layers as they run
        self.discriminator_sharded = _discriminator_sharding(args, self.accelerator) == "fsdp"
        if self.discriminator_sharded:
            shard_discriminator(discriminator, _fsdp_mesh(self.accelerator))
            self.reward.even_out = self._even_out_passes
        self.discriminator_updater = DiscriminatorUpdater(
            discriminator,
            learning_rate=args.discriminator_learning_rate,
            weight_decay=args.discriminator_weight_decay,
            max_grad_norm=args.discriminator_max_grad_norm,
            loss=args.discriminator_loss,
            batch_size=args.discriminator_batch_size,
            accelerator=self.accelerator,
        )
        self.replay = ReplayBuffer(args.replay_buffer_size, seed=args.seed)
        self.d_acc_ema: float | None = None
        self.d_skips = 0  # consecutive skipped discriminator updates
        self.d_acc_window: deque[float] = deque(maxlen=args.safeguard_window)
        self._raised: set[str] = set()  # flags raised at the last step: each warns once when it rises
        self.style_pattern = re.compile(args.style_regex) if args.style_regex else None
        self.val_rows = held_out if held_out is not None else self._validation_file_rows()
        self._last_val_step = -1

    # -- steps 1-4: sample, score, advantages (TRL), then the discriminator's update --------------------------------
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return output
        batch = self.reward.last_batch
        self.reward.last_batch = None
        self._log_validation()  # before the update: the discriminator that gave this step's rewards, as d_acc is
        stats, first_rows, skipped = self._update_discriminator(batch)
        d_metrics = stats.as_metrics()
        if self.args.discriminator_skip_accuracy is not None:
            d_metrics["d_skipped"] = float(skipped)
        self._log_step_diagnostics(d_metrics, batch, output, first_rows)
        if self.args.student_objective == "teacher_sft" or self.args.teacher_sft_weight:
            output.update(self._teacher_tensors(batch, first_rows))
        return output

    def _update_discriminator(self, batch) -> tuple[DiscriminatorStats, list[int], bool]:
        """``discriminator_updates`` steps on the fresh samples plus ``discriminator_replay`` replayed ones, unless
        ``discriminator_skip_accuracy`` skips them; returns the statistics of the fresh samples measured before any
        update (held out), each fresh prompt's first row, and whether the update was skipped."""
        prompts, teachers, group, first_rows = _group_by_prompt(list(batch["prompts"]), list(batch["teacher"]))
        stats = self._skip_check(prompts, teachers, group, batch["scores"])
        skipped = stats is not None
        self.d_skips = self.d_skips + 1 if skipped else 0
        if not skipped:
            stats = self._discriminator_steps(batch)
        if self.args.discriminator_replay:
            self.replay.add(zip(batch["prompts"], batch["teacher"], batch["student"], strict=True))
        return stats, first_rows, skipped

    def _skip_check(self, prompts, teachers, group, scores) -> DiscriminatorStats | None:
        """The fresh samples' statistics when the update is to be skipped (accuracy above the threshold, fewer than
        ``discriminator_max_skips`` skips in a row), else None. The accuracy is averaged over processes so that all
        take the same decision: the update reduces gradients across them."""
        threshold = self.args.discriminator_skip_accuracy
        if threshold is None or self.d_skips >= self.args.discriminator_max_skips:
            return None
        stats = evaluate_pairs(
            self.discriminator,
            prompts,
            teachers,
            group,
            scores,
            loss=self.args.discriminator_loss,
            batch_size=self.args.discriminator_batch_size,
        )
        self._even_out_passes(len(teachers))
        accuracy = torch.tensor(stats.accuracy, device=self.accelerator.device)
        return stats if self.accelerator.reduce(accuracy, reduction="mean").item() > threshold else None

    def _discriminator_steps(self, batch) -> DiscriminatorStats:
        """The discriminator's update; returns the first step's statistics, measured before any update."""
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
        self._even_out_passes(len(replayed))
        unique_prompts, unique_teachers, group, _ = _group_by_prompt(prompts, teachers)
        num_fresh = len(batch["student"])
        first = None
        for _ in range(self.args.discriminator_updates):
            stats = self.discriminator_updater.step(
                unique_prompts, unique_teachers, students, group, scores if first is None else None, num_fresh
            )
            first = first or stats
        return first

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
        if self.style_pattern is not None:
            metrics["style_match"] = sum(style_matches(self.style_pattern, batch["student"])) / len(batch["student"])
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
        self._warn_on_length(metrics)
        self._warn_on_discriminator(metrics)
        for name, value in metrics.items():
            self._metrics["train"][name].append(value)

    def _flag(self, metrics: dict[str, float], name: str, raised: bool, message: str, *args: Any) -> None:
        """Record flag ``name`` (1.0 or 0.0) in the step's metrics; warn in one log line when it rises, not at every
        step while it stays raised."""
        metrics[name] = float(raised)
        if raised and name not in self._raised:
            logger.warning("step %d: " + message, self.state.global_step, *args)
        if raised:
            self._raised.add(name)
        else:
            self._raised.discard(name)

    def _warn_on_length(self, metrics: dict[str, float]) -> None:
        """Flag ``length_drift`` while the student's mean length is outside [1/r, r] times the teacher's (r:
        ``length_warning_ratio``): longer is the reward-hacking sign the paper shows for frozen discriminators,
        shorter a student collapsing onto a short pattern the discriminator rewards (the demo's "Ahoy! Ahoy!")."""
        if self.args.length_warning_ratio is None:
            return
        high = max(self.args.length_warning_ratio, 1 / self.args.length_warning_ratio)
        ratio = metrics["len_ratio"]
        self._flag(
            metrics,
            "length_drift",
            ratio > high or ratio < 1 / high,
            "the student's mean response length (%.0f tokens) is %.2fx the teacher's (%.0f), outside [1/%.1f, %.1f] "
            "(length_warning_ratio): a sign of reward hacking; check samples and the judge score",
            metrics["student_len"],
            ratio,
            metrics["teacher_len"],
            high,
            high,
        )

    def _warn_on_discriminator(self, metrics: dict[str, float]) -> None:
        """Flag ``d_collapse`` / ``d_saturated`` while the fresh-sample accuracy averaged over the last
        ``safeguard_window`` steps is below ``discriminator_collapse_accuracy`` / at or above
        ``discriminator_saturation_accuracy``; only over a full window, since one step's accuracy is noisy."""
        collapse, saturation = self.args.discriminator_collapse_accuracy, self.args.discriminator_saturation_accuracy
        if collapse is None and saturation is None:
            return
        window = self.d_acc_window
        window.append(metrics["d_acc"])
        full, mean = len(window) == window.maxlen, sum(window) / len(window)
        if collapse is not None:
            self._flag(
                metrics,
                "d_collapse",
                full and mean < collapse,
                "the discriminator's fresh-sample accuracy over the last %d steps is %.2f, below "
                "discriminator_collapse_accuracy=%.2f: the student fools it systematically, likely through a shortcut "
                "it rewards; check samples",
                len(window),
                mean,
                collapse,
            )
        if saturation is not None:
            self._flag(
                metrics,
                "d_saturated",
                full and mean >= saturation,
                "the discriminator's fresh-sample accuracy over the last %d steps is %.2f, at or above "
                "discriminator_saturation_accuracy=%.2f: it wins every pair and its scores stop ranking the student's "
                "samples; consider discriminator_skip_accuracy or a lower discriminator_learning_rate",
                len(window),
                mean,
                saturation,
            )

    # -- d_acc_val: the discriminator on held-out prompts and fresh samples of the current student ----------------
    def _validation_file_rows(self) -> list[tuple[Any, str]]:
        """(prompt, teacher response) pairs of ``discriminator_val_file``, truncated like the training data."""
        args = self.args
        if args.discriminator_val_every is None:
            return []
        rows, _ = load_training_rows(
            args.discriminator_val_file,
            prompt_column=args.prompt_column,
            response_column=args.response_column,
            skip_bad_rows=args.skip_bad_rows,
        )
        rows, _, _ = truncate_rows(
            rows[: args.discriminator_val_size],
            self._tokenizer,
            max_prompt_length=args.max_prompt_length,
            max_response_length=args.max_completion_length,
        )
        return [(row.prompt, row.response) for row in rows]

    def _log_validation(self) -> None:
        """Every ``discriminator_val_every`` steps, log d_acc_val and d_score_gap_val on the validation prompts."""
        every = self.args.discriminator_val_every
        step = self.state.global_step + 1  # the optimizer step these samples are for
        if every is None or step % every or step == self._last_val_step:
            return
        self._last_val_step = step
        prompts, teachers = map(list, zip(*self.val_rows, strict=True))
        batch_size = self.args.discriminator_batch_size
        samples = self._sample_validation(prompts)
        student_scores = self.discriminator.score(prompts, samples, batch_size=batch_size)
        stats = evaluate_pairs(
            self.discriminator,
            prompts,
            teachers,
            range(len(prompts)),
            student_scores,
            loss=self.args.discriminator_loss,
            batch_size=batch_size,
        )
        self._even_out_passes(len(prompts), rounds=2)
        self._metrics["train"]["d_acc_val"].append(stats.accuracy)
        self._metrics["train"]["d_score_gap_val"].append(stats.score_gap)

    def _sample_validation(self, prompts: list) -> list[str]:
        """One sample of the current student per prompt, decoded as TRL decodes the samples it hands the reward:
        greedy, or at ``discriminator_val_temperature`` from a generator seeded by the step. Training's random state
        is restored after, so switching d_acc_val on changes no training sample."""
        args, tokenizer = self.args, self._tokenizer
        temperature = args.discriminator_val_temperature
        config = GenerationConfig(
            max_new_tokens=self.max_completion_length,
            do_sample=temperature > 0,
            temperature=temperature or None,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=self.eos_token_ids,
            disable_compile=True,
        )
        texts = [
            tokenizer.apply_chat_template(
                prompt,
                chat_template=self.chat_template,
                add_generation_prompt=True,
                tokenize=False,
                **self.chat_template_kwargs,
            )
            for prompt in prompts
        ]
        device = self.accelerator.device
        samples: list[str] = []
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=args.ds3_gather_for_generation
            ) as model,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
        ):
            torch.manual_seed(args.seed + self.state.global_step)
            was_training = model.training
            model.eval()
            try:
                for start in range(0, len(texts), args.per_device_train_batch_size):
                    chunk = texts[start : start + args.per_device_train_batch_size]
                    batch = tokenizer(
                        chunk, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
                    ).to(device)
                    generated = model.generate(**batch, generation_config=config)[:, batch["input_ids"].shape[1] :]
                    samples += [
                        tokenizer.decode(_until_eos(row.tolist(), self.eos_token_ids), skip_special_tokens=True)
                        for row in generated
                    ]
            finally:
                model.train(was_training)
        return samples

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
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.args.teacher_sft_weight:
            loss = loss + self.args.teacher_sft_weight * self._teacher_sft_loss(model, inputs)
        return loss

    def _teacher_tensors(self, batch, first_rows) -> dict[str, torch.Tensor]:
        """Teacher turn tokens for the cross-entropy on the teacher's answer (warmup's loss, or beside GRPO's with
        teacher_sft_weight), one row per prompt (weight 0 on repeats)."""
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
        # Every process gathers, weighted or not: a gather that only some processes join never returns.
        logged = torch.stack([loss.detach() * weight, torch.tensor(weight, device=loss.device)])
        losses, weights = self.accelerator.gather(logged).view(-1, 2).sum(dim=0).tolist()
        if weights:
            self._metrics["train"]["sft_loss"].append(losses / weights)
        # GRPOTrainer declares its losses pre-scaled for gradient accumulation; so is this one.
        return weight * loss / self.current_gradient_accumulation_steps

    def _even_out_passes(self, count: int, *, rounds: int = 1) -> None:
        """With a sharded discriminator, after this process scored ``count`` sequences ``rounds`` times: forward
        passes up to the number the busiest process made, so that every process joins every weight gather."""
        if not self.discriminator_sharded:
            return
        batch_size = self.args.discriminator_batch_size
        chunks = len(range(0, count, batch_size)) * rounds
        agreed = self.accelerator.gather(torch.tensor([chunks], device=self.accelerator.device)).max().item()
        pad_passes(self.discriminator, int(agreed) - chunks)

    # -- checkpoints hold the discriminator and its optimizer next to the student --------------------------------
    def _gather_discriminator(self) -> tuple[dict | None, dict]:
        """The discriminator's model state dict (None: replicated, its own tensors are whole) and its updater's state,
        gathered whole onto the main process when sharded. Every process calls it: with a sharded discriminator it
        is a collective."""
        if not self.discriminator_sharded:
            return None, self.discriminator_updater.state_dict()
        return full_model_state_dict(self.discriminator), self.discriminator_updater.state_dict()

    def save_discriminator(self, folder: Path) -> None:
        """The discriminator as a plain Hugging Face folder, written by the main process; every process calls it (a
        sharded discriminator is gathered together)."""
        state_dict, _ = self._gather_discriminator()
        if self.accelerator.is_main_process:
            self.discriminator.save_pretrained(folder, state_dict=state_dict)

    def _save_checkpoint(self, model, trial):
        # Gathered on every process before the checkpoint (whose extras only the main process writes).
        self._gathered_discriminator = self._gather_discriminator()
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._gathered_discriminator = None

    def _save_checkpoint_extras(self, checkpoint: Path) -> None:
        folder = checkpoint / DISCRIMINATOR
        gathered = getattr(self, "_gathered_discriminator", None)
        state_dict, updater_state = gathered if gathered is not None else self._gather_discriminator()
        self.discriminator.save_pretrained(folder, state_dict=state_dict)
        torch.save(updater_state, folder / DISCRIMINATOR_STATE)
        extra = {
            "d_acc_ema": self.d_acc_ema,
            "replay": self.replay.state_dict(),
            "d_skips": self.d_skips,
            "d_acc_window": list(self.d_acc_window),
        }
        (folder / TRAINER_EXTRA_STATE).write_text(json.dumps(extra))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        folder = Path(checkpoint) / DISCRIMINATOR
        restored = Discriminator.from_pretrained(folder, max_length=self.discriminator.max_length)
        if self.discriminator_sharded:
            load_full_model_state_dict(self.discriminator, restored.model.state_dict())
        else:
            self.discriminator.model.load_state_dict(restored.model.state_dict())
        # On the CPU: a process's device can be a name torch.load cannot restore to ("cpu:0" with several CPU
        # processes); the optimizer moves its states to its parameters' device when it loads them.
        state = torch.load(folder / DISCRIMINATOR_STATE, map_location="cpu", weights_only=True)
        self.discriminator_updater.load_state_dict(state)
        extra_path = folder / TRAINER_EXTRA_STATE
        if extra_path.exists():
            extra = json.loads(extra_path.read_text())
            self.d_acc_ema = extra["d_acc_ema"]
            self.replay.load_state_dict(extra["replay"])
            self.d_skips = extra.get("d_skips", 0)  # absent from checkpoints written before the option existed
            self.d_acc_window.extend(extra.get("d_acc_window", []))
        logger.info("resumed the discriminator and its optimizer from %s", folder)


def _discriminator_sharding(args: GADConfig, accelerator) -> str:
    """'fsdp' or 'replicate': ``discriminator_sharding``, with 'auto' following the student (FSDP: sharded). One-line
    errors where the discriminator cannot follow: DeepSpeed ZeRO-3, sharding without several processes."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and getattr(plugin, "zero_stage", None) == 3:
        raise GadError(ZERO3_UNSUPPORTED)
    mode = getattr(args, "discriminator_sharding", "replicate")
    if mode == "auto":
        mode = "fsdp" if accelerator.distributed_type == DistributedType.FSDP else "replicate"
    if mode == "fsdp" and accelerator.num_processes < 2:
        mode = "replicate"  # one process: a shard is the whole discriminator
    if mode == "fsdp" and accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise GadError("a sharded discriminator needs FSDP version 2 (fsdp_version: 2), not FSDP 1")
    if mode == "fsdp" and args.discriminator_fused_update:
        raise GadError(
            "discriminator_fused_update needs a replicated discriminator: set discriminator_sharding=replicate"
        )
    return mode


def _student_checkpointing(args: GADConfig, accelerator) -> bool:
    """Whether the student checkpoints its activations: the recipe's activation_checkpointing, or FSDP's own
    (fsdp_activation_checkpointing in the accelerate config, what the paper recipes use)."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return bool(args.activation_checkpointing or getattr(plugin, "activation_checkpointing", False))


def _fsdp_mesh(accelerator):
    """The student's FSDP2 mesh (its data-parallel shard dimensions) when accelerate made one, else one over every
    process."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh, parallelism = accelerator.torch_device_mesh, accelerator.parallelism_config
    if mesh is not None and parallelism is not None and accelerator.is_fsdp2:
        return mesh[tuple(parallelism.fsdp_dim_names)]
    return init_device_mesh(accelerator.device.type, (accelerator.num_processes,))


def _hold_out_validation(dataset, args: GADConfig) -> tuple[Any, list[tuple[Any, str]] | None]:
    """For d_acc_val without a validation file: ``discriminator_val_size`` rows drawn with ``seed`` and removed from
    the training data, so that neither model ever trains on them. Returns the training data and those (prompt, teacher
    response) pairs, or the data unchanged and None."""
    if args.discriminator_val_every is None or args.discriminator_val_file:
        return dataset, None
    size = args.discriminator_val_size
    if size >= len(dataset):
        raise GadError(f"discriminator_val_size ({size}) must leave rows to train on: train_file has {len(dataset)}")
    held = set(random.Random(args.seed).sample(range(len(dataset)), size))
    rows = dataset.select(sorted(held))
    kept = dataset.select([i for i in range(len(dataset)) if i not in held])
    return kept, list(zip(rows["prompt"], rows["teacher_response"], strict=True))


def _until_eos(ids: list[int], eos_ids: list[int]) -> list[int]:
    """Token ids up to the first end-of-sequence token, included (what follows is padding)."""
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[: position + 1]
    return ids


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
