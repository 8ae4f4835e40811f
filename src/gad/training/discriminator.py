"""The discriminator: a scalar-head sequence scorer that learns to rank teacher answers above student answers.

Text in, score out. Teacher responses and student samples reach the discriminator as *text* and go through one
function, :meth:`Discriminator.render`, which applies the discriminator's own chat template to [prompt; response].
So a student sample and a teacher response with the same text become the same token sequence, ending with the same
end-of-turn token; the discriminator cannot learn "ends with EOS" instead of "sounds like the teacher" (the shortcut
re-implementers of GAD hit), and a discriminator with another tokenizer than the student's works unchanged.

The score is the scalar head's output at the last token of the sequence (the paper's choice). Sequences longer than
``max_length`` are cut from the left, so the ending, where the score is read, is always kept.

Encoder checkpoints (BERT, RoBERTa, MiniLM, ...) work too, as encoders: their text gets the tokenizer's special tokens
([CLS] ... [SEP]), the score is the model's own pooled output (the first token, [CLS], for the BERT family), and a long
sequence loses the start of its prompt, never [CLS] nor the response's end. ``max_length`` is capped at the positions
the model can embed (512 for BERT), special tokens included.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gad.errors import GadError
from gad.models import FALLBACK_TEMPLATE, require_model_folder

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]
LOSSES = ("bradley_terry", "cross_entropy")
# How a discriminator score D becomes a GRPO reward, given D_t, the score of the teacher's answer to the same prompt:
# the raw score (the paper's); log sigmoid(D), GAIL's bounded reward (at most 0, flat where the discriminator is sure a
# sample is the teacher's, steep where it is sure it is not); or log sigmoid(D - D_t), the Bradley-Terry
# log-probability that the sample passes for the teacher's answer, which flattens once a sample scores above that
# answer, so that out-doing the teacher earns nothing.
REWARD_TRANSFORMS = {
    "raw": lambda scores, teacher_scores: scores,
    "logsigmoid": lambda scores, teacher_scores: F.logsigmoid(scores),
    "logsigmoid_vs_teacher": lambda scores, teacher_scores: F.logsigmoid(scores - teacher_scores),
}
TEACHER_RELATIVE_TRANSFORMS = ("logsigmoid_vs_teacher",)  # these score the teacher's answers too


def bradley_terry_loss(teacher_scores: torch.Tensor, student_scores: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Mean over (teacher, student) pairs of -log sigmoid(D(teacher) - D(student)) (the paper's Eq. 3).

    ``teacher_scores`` has one entry per prompt; ``group[i]`` is the index of student sample i's prompt, so each
    teacher response is scored once, not once per sample.
    """
    return F.softplus(-(teacher_scores[group] - student_scores)).mean()


def cross_entropy_loss(teacher_scores: torch.Tensor, student_scores: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """The GAN-style ablation: mean over pairs of -log sigmoid(D(teacher)) - log(1 - sigmoid(D(student)))."""
    return (F.softplus(-teacher_scores[group]) + F.softplus(student_scores)).mean()


DISCRIMINATOR_LOSSES = {"bradley_terry": bradley_terry_loss, "cross_entropy": cross_entropy_loss}


@dataclass
class DiscriminatorStats:
    """What one discriminator update saw; logged as d_loss, d_acc, d_teacher_score, d_student_score, d_score_gap."""

    loss: float
    accuracy: float
    teacher_score: float
    student_score: float

    @classmethod
    def from_scores(
        cls,
        teacher_scores: torch.Tensor,
        student_scores: torch.Tensor,
        group: Sequence[int],
        *,
        loss: float,
        num_fresh: int | None = None,
    ) -> DiscriminatorStats:
        """Accuracy (share of pairs with the teacher ranked above the sample) and mean scores over the first
        ``num_fresh`` student samples (default: all) and their prompts' teacher responses."""
        fresh = list(group)[:num_fresh]
        teacher, student = teacher_scores.detach(), student_scores.detach()[: len(fresh)]
        index = torch.as_tensor(fresh, dtype=torch.long, device=teacher.device)
        return cls(
            loss=loss,
            accuracy=(teacher[index] > student.to(teacher.device)).float().mean().item(),
            teacher_score=teacher[sorted(set(fresh))].mean().item(),
            student_score=student.mean().item(),
        )

    @property
    def score_gap(self) -> float:
        return self.teacher_score - self.student_score

    def as_metrics(self) -> dict[str, float]:
        return {
            "d_loss": self.loss,
            "d_acc": self.accuracy,
            "d_teacher_score": self.teacher_score,
            "d_student_score": self.student_score,
            "d_score_gap": self.score_gap,
        }


class Discriminator(torch.nn.Module):
    """A sequence scorer over [prompt; response] text: a causal-LM backbone with a one-output linear head, or an
    encoder classifier (``is_encoder``), which pools on its own.

    Built from ``AutoModelForSequenceClassification(num_labels=1)`` so that the saved folder loads with plain
    transformers. Dropout is switched off (the paper's choice), so scoring is deterministic. ``max_length`` counts
    every token the model reads, special tokens included, and is capped at the model's position limit. It computes
    in its weights' dtype (fp32 as loaded) unless :meth:`use_bf16` turns on bf16 autocast, and keeps every
    activation for the backward pass unless :meth:`enable_activation_checkpointing` is called.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int = 4096):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        # transformers' decoder classifiers (Llama, Qwen, GPT-2, ...) name their head `score` and read the last real
        # token; encoder classifiers (BERT, RoBERTa, DeBERTa, ...) name it `classifier` and pool the first token.
        self.is_encoder = not hasattr(model, "score")
        limit = _position_limit(model)
        if limit is not None and max_length > limit:
            # Past it an absolute-position model fails ("expanded size 3011 must match 512") and a rotary one reads
            # positions it never trained on.
            logger.info("discriminator sequences are cut at %d tokens, the positions its model embeds", limit)
            max_length = limit
        self.max_length = max_length
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if tokenizer.chat_template is None:
            logger.warning("discriminator tokenizer has no chat template; using a plain 'role: content' layout")
            tokenizer.chat_template = FALLBACK_TEMPLATE
        tokenizer.truncation_side = "left"
        _disable_dropout(model)
        self.eval()  # no dropout: scores are deterministic, which the chunked update relies on
        self.bf16 = False  # forward passes under bf16 autocast (use_bf16)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, max_length: int = 4096, dtype: torch.dtype = torch.float32, seed: int = 0
    ) -> Discriminator:
        """Load a discriminator from any causal-LM or sequence-classification checkpoint folder.

        A causal LM (the student checkpoint, the paper's default) gets a new randomly initialised head, drawn from
        ``seed`` so that every process of a multi-process run starts from the same weights.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = str(path)
        require_model_folder(path, "discriminator")
        torch.manual_seed(seed)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the "score.weight newly initialised" report is expected here
        try:
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as error:
            raise GadError(f"cannot load the discriminator from {path}: {error}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        return cls(model, tokenizer, max_length=max_length)

    def save_pretrained(self, folder: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write a Hugging Face folder that loads with ``AutoModelForSequenceClassification``; ``state_dict`` (the
        model's, gathered from a sharded discriminator) replaces the model's own tensors."""
        self.model.save_pretrained(folder, state_dict=state_dict)
        self.tokenizer.save_pretrained(folder)

    def train_top_layers(self, count: int | None) -> None:
        """Train only the top ``count`` transformer layers, the final norm and the score head; the input embeddings and
        the lower layers are frozen. ``None`` trains everything (the paper). The update then back-propagates through
        the top layers only and keeps optimizer states for them only. Call before building the optimizer."""
        if count is None:
            return
        layers = _decoder_layers(self.model)
        if layers is None:
            raise GadError(
                f"discriminator_trainable_layers: cannot find the layer list of {type(self.model).__name__}; "
                "leave it unset to train the whole discriminator"
            )
        if not 1 <= count <= len(layers):
            raise GadError(f"discriminator_trainable_layers must be in 1..{len(layers)} (its layer count), got {count}")
        for module in (self.model.get_input_embeddings(), *layers[: len(layers) - count]):
            module.requires_grad_(False)

    def use_bf16(self, enabled: bool = True) -> None:
        """Compute every forward pass (scoring, the update's chunks, the fused graph) under bf16 autocast. The
        parameters stay as they are (fp32), and so do their gradients and the optimizer's states: autocast casts a
        copy of each weight for its matrix product and back-propagates into the fp32 original. Scores come back
        fp32. One-line error on a GPU without bf16; the CPU has it."""
        if enabled and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise GadError(
                f"discriminator_bf16 needs bf16 support, which this GPU ({torch.cuda.get_device_name(self.device)}) "
                "lacks: set it to false"
            )
        self.bf16 = enabled

    def enable_activation_checkpointing(self) -> None:
        """Recompute each transformer layer's activations in the backward pass instead of keeping them (transformers'
        activation checkpointing, non-reentrant): the update holds each layer's input only, for another forward
        pass's worth of compute; the gradients are the same. Call before :func:`shard_discriminator`, so that FSDP2
        wraps the layers as they will run."""
        if any(_is_fsdp(module) for module in self.modules()):
            raise GadError("enable the discriminator's activation checkpointing before sharding it")
        model = self.model
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise GadError(
                f"discriminator_activation_checkpointing: {type(model).__name__} does not support activation "
                "checkpointing; set it to false"
            )
        # The reentrant variant back-propagates into a layer only when its input requires gradients, which frozen
        # embeddings' output does not.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:  # transformers before the rename
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # transformers also makes the embeddings' output require gradients, which only the reentrant variant needs;
        # with the lower layers frozen (train_top_layers) it would back-propagate through them for nothing.
        model.disable_input_require_grads()
        # transformers checkpoints a layer only in training mode; with every dropout at 0 (_disable_dropout) that mode
        # computes what evaluation mode does, so scores stay deterministic.
        self.train()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def render(self, prompt: Messages, response: str) -> str:
        """[prompt; response] as text in the discriminator's chat template, ending with its end-of-turn marker."""
        messages = [*prompt, {"role": "assistant", "content": response}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def encode(self, prompts: Sequence[Messages], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        """Right-padded token ids and attention mask for a batch of [prompt; response] pairs."""
        texts = [self.render(p, r) for p, r in zip(prompts, responses, strict=True)]
        batch = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            padding_side="right",
            truncation=True,
            max_length=self.max_length,
            # A decoder's chat template already holds every special token. An encoder needs [CLS] ... [SEP]: it pools
            # [CLS]; with left truncation the tokenizer cuts the text between them, so both survive.
            add_special_tokens=self.is_encoder,
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores [B] (fp32): read at each sequence's last real token, or an encoder's own pooled output."""
        # Disabled, autocast also keeps out one the caller may run under: the precision is the discriminator's own.
        # No weight cache: every weight is used once a pass, and the cache would hold a bf16 copy of all of them (of
        # every gathered layer, when sharded) until the pass ends.
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            return self._scores(input_ids, attention_mask)

    def _scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.is_encoder:
            # The model's pooling (BERT: [CLS], position 0 of a right-padded batch) decides where the score is read.
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float().clone()
        backbone = getattr(self.model, self.model.base_model_prefix)
        # No KV cache: nothing generates from it (a checkpointed layer would drop it anyway, with a warning).
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        last = attention_mask.sum(dim=1) - 1
        last_hidden = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        # A copy, not a view of the head's output: FSDP2's backward hook on a sharded discriminator's output needs one.
        return self.model.score(last_hidden.to(self.model.score.weight.dtype))[:, 0].float().clone()

    def score(self, prompts: Sequence[Messages], responses: Sequence[str], *, batch_size: int = 16) -> torch.Tensor:
        """Scores of [prompt; response] pairs, without gradients, in chunks of ``batch_size`` sequences."""
        with torch.no_grad():
            return self.score_with_grad(prompts, responses, batch_size=batch_size)

    def score_with_grad(
        self, prompts: Sequence[Messages], responses: Sequence[str], *, batch_size: int = 16
    ) -> torch.Tensor:
        """Scores that keep the autograd graph (when gradients are enabled), chunked like :meth:`score`."""
        scores = []
        for start in range(0, len(responses), batch_size):
            batch = self.encode(prompts[start : start + batch_size], responses[start : start + batch_size])
            scores.append(self(**{k: v.to(self.device) for k, v in batch.items()}))
        return torch.cat(scores) if scores else torch.zeros(0, device=self.device)


def evaluate_pairs(
    discriminator: Discriminator,
    prompts: Sequence[Messages],
    teacher_responses: Sequence[str],
    group: Sequence[int],
    student_scores: torch.Tensor,
    *,
    loss: str = "bradley_terry",
    batch_size: int = 16,
) -> DiscriminatorStats:
    """What :meth:`DiscriminatorUpdater.step` reports, without updating: how the discriminator ranks teacher response
    ``teacher_responses[group[i]]`` against student sample i, whose score ``student_scores[i]`` is given."""
    teacher_scores = discriminator.score(prompts, teacher_responses, batch_size=batch_size)
    student_scores = student_scores.detach().to(teacher_scores.device).float()
    group_t = torch.as_tensor(list(group), dtype=torch.long, device=teacher_scores.device)
    value = DISCRIMINATOR_LOSSES[loss](teacher_scores, student_scores, group_t).item()
    return DiscriminatorStats.from_scores(teacher_scores, student_scores, group, loss=value)


def _require_finite(loss: torch.Tensor) -> None:
    if not torch.isfinite(loss):
        raise GadError(
            "discriminator loss is not finite; lower discriminator_learning_rate or check the data for empty responses"
        )


class DiscriminatorUpdater:
    """One optimizer step of the discriminator on (teacher, student samples) groups.

    By default memory stays bounded for any group size: scores are first computed without gradients, the loss's
    gradient with respect to each score is taken on those scalars, and then each chunk of sequences is re-scored
    with gradients and back-propagated with that score gradient. This is exact because scoring is deterministic (no
    dropout). Student scores computed earlier for the reward (before this update, as in the paper's Algorithm 1)
    are reused; if they still hold their graph, it is back-propagated directly (one forward pass less).

    With several processes (``accelerator``), each holds its own pairs, as many or not, and the step is the one a
    single process would take on all of them: each back-propagates its share of the mean over every process's pairs,
    the gradients are summed across processes, so every copy of the discriminator takes the same step; the returned
    statistics are over every process's pairs too. The discriminator may also be sharded across the processes with
    FSDP2 (``torch.distributed.fsdp.fully_shard`` on its modules, before building the updater; not with the fused
    update): every process then makes the same number of forward and backward passes, padded where it has fewer.
    """

    def __init__(
        self,
        discriminator: Discriminator,
        *,
        learning_rate: float,
        weight_decay: float = 0.01,
        max_grad_norm: float | None = 0.2,
        loss: str = "bradley_terry",
        batch_size: int = 16,
        accelerator=None,
    ):
        if loss not in DISCRIMINATOR_LOSSES:
            raise GadError(f"unknown discriminator_loss '{loss}'; choose one of {', '.join(LOSSES)}")
        self.discriminator = discriminator
        self.loss_fn = DISCRIMINATOR_LOSSES[loss]
        self.max_grad_norm = max_grad_norm
        self.batch_size = batch_size
        self.accelerator = accelerator
        self.trainable = [p for p in discriminator.parameters() if p.requires_grad]
        self.sharded = any(_is_sharded(p) for p in self.trainable)
        for module in discriminator.modules():
            if _is_fsdp(module):
                # Each process back-propagates its share of the mean over every process's pairs, so the reduction
                # is a plain sum (FSDP divides by the process count by default); plain sums also work over gloo.
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)
        self.optimizer = torch.optim.AdamW(self.trainable, lr=learning_rate, weight_decay=weight_decay)

    @property
    def distributed(self) -> bool:
        return self.accelerator is not None and self.accelerator.num_processes > 1

    def step(
        self,
        prompts: Sequence[Messages],
        teacher_responses: Sequence[str],
        student_responses: Sequence[str],
        group: Sequence[int],
        student_scores: torch.Tensor | None = None,
        num_fresh: int | None = None,
    ) -> DiscriminatorStats:
        """Update on teacher response ``teacher_responses[group[i]]`` against student sample i.

        ``prompts`` and ``teacher_responses`` hold one entry per prompt; ``student_responses`` and ``group`` one entry
        per student sample. ``student_scores`` may be the scores computed for the reward: detached, they are reused
        as they are; still attached to the discriminator's graph (``discriminator_fused_update``), that graph is
        back-propagated instead of re-scoring. The returned accuracy and mean scores are measured before the update
        on the first ``num_fresh`` samples (default: all), which the discriminator has not trained on: held out.
        """
        disc = self.discriminator
        group = list(group)
        group_t = torch.as_tensor(group, dtype=torch.long, device=disc.device)
        student_prompts = [prompts[g] for g in group]
        fused = student_scores is not None and student_scores.requires_grad
        if fused and self.sharded:
            raise GadError("discriminator_fused_update needs a replicated discriminator, not a sharded one")
        teacher_chunks, student_chunks = self._chunks(len(teacher_responses)), self._chunks(len(student_responses))
        forwards = 0 if fused else teacher_chunks + (student_chunks if student_scores is None else 0)
        backwards = teacher_chunks + student_chunks if group and not fused else 0
        # Agreed before the first pass: how many passes the busiest process makes, and how many pairs there are.
        counts = self._across_processes([forwards, backwards, len(group)])
        most_forwards, most_backwards = (int(n) for n in counts[:, :2].max(dim=0).values.tolist())
        pairs = counts[:, 2].sum().item()

        self.optimizer.zero_grad(set_to_none=True)
        if fused:
            teacher_graph = disc.score_with_grad(prompts, teacher_responses, batch_size=self.batch_size)
            student_graph = student_scores
        else:
            teacher_scores = disc.score(prompts, teacher_responses, batch_size=self.batch_size)
            if student_scores is None:
                student_scores = disc.score(student_prompts, student_responses, batch_size=self.batch_size)
            # Leaves: the loss's gradient with respect to each score, back-propagated chunk by chunk below.
            teacher_graph = teacher_scores.clone().requires_grad_(True)
            student_graph = student_scores.to(disc.device).float().clone().requires_grad_(True)
        self._pad_passes(most_forwards - forwards, backward=False)
        loss = self.loss_fn(teacher_graph, student_graph, group_t) if group else None  # a process may have no pairs
        if loss is not None:
            (loss * (len(group) / pairs)).backward()  # this process's share of the mean over every process's pairs
            if not fused:
                self._backward_chunks(prompts, teacher_responses, teacher_graph.grad)
                self._backward_chunks(student_prompts, student_responses, student_graph.grad)
        self._pad_passes(most_backwards - backwards, backward=True)
        self._sum_gradients()
        stats = self._statistics(loss, teacher_graph.detach(), student_graph.detach(), group, num_fresh)
        _require_finite(torch.tensor(stats.loss))  # every process's pairs: all processes stop, before any step
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(disc.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stats

    def _chunks(self, count: int) -> int:
        """How many passes :meth:`Discriminator.score` and :meth:`_backward_chunks` make over ``count`` sequences."""
        return len(range(0, count, self.batch_size))

    def _across_processes(self, values: list[float]) -> torch.Tensor:
        """Every process's ``values``, one row per process (float64: counts stay exact)."""
        row = torch.tensor([values], dtype=torch.float64, device=self.discriminator.device)
        return self.accelerator.gather(row) if self.distributed else row

    def _statistics(
        self,
        loss: torch.Tensor | None,
        teacher_scores: torch.Tensor,
        student_scores: torch.Tensor,
        group: list[int],
        num_fresh: int | None,
    ) -> DiscriminatorStats:
        """The statistics over every process's pairs: each process's means weighted by its counts (pairs, fresh
        samples, fresh prompts), so that uneven processes report what one process holding every pair would."""
        fresh = group[:num_fresh]
        counts = [len(group), len(fresh), len(fresh), len(set(fresh))]  # loss, accuracy, student score, teacher score
        means = [math.nan] * 4
        if loss is not None:
            local = DiscriminatorStats.from_scores(
                teacher_scores, student_scores, group, loss=loss.item(), num_fresh=num_fresh
            )
            means = [local.loss, local.accuracy, local.student_score, local.teacher_score]
        sums = [mean * count if count else 0.0 for mean, count in zip(means, counts, strict=True)]
        totals = self._across_processes([*counts, *sums]).sum(dim=0).tolist()
        mean_loss, accuracy, student_score, teacher_score = (
            total / count if count else math.nan for total, count in zip(totals[4:], totals[:4], strict=True)
        )
        return DiscriminatorStats(
            loss=mean_loss, accuracy=accuracy, teacher_score=teacher_score, student_score=student_score
        )

    def _backward_chunks(self, prompts: Sequence[Messages], responses: Sequence[str], grads: torch.Tensor) -> None:
        disc = self.discriminator
        for start in range(0, len(responses), self.batch_size):
            end = start + self.batch_size
            batch = disc.encode(prompts[start:end], responses[start:end])
            scores = disc(**{k: v.to(disc.device) for k, v in batch.items()})
            scores.backward(grads[start:end])

    def _pad_passes(self, count: int, *, backward: bool) -> None:
        """Passes on a one-token sequence (with a zero gradient, when ``backward``), so that every process makes as
        many as the busiest one: a sharded discriminator gathers its weights in each forward pass and reduces its
        gradients in each backward pass, collectives that every process must join or all of them wait."""
        pad_passes(self.discriminator, count, backward=backward)

    def _sum_gradients(self) -> None:
        """Sum each replicated parameter's gradient across processes (a sharded one was reduced by FSDP in each
        backward pass). A parameter without a gradient here (no pairs on this process, or outside its graph) takes
        part with zeros, so that every process makes the same all-reduces in the same order."""
        if not self.distributed:
            return
        for parameter in self.trainable:
            if _is_sharded(parameter):
                continue
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            parameter.grad = self.accelerator.reduce(parameter.grad, reduction="sum")

    def state_dict(self) -> dict:
        """The optimizer's state: its own (replicated), or, sharded, the full one gathered from every process (keyed
        by parameter name; a collective that every process joins, which returns it on the main process only)."""
        if not self.sharded:
            return {"optimizer": self.optimizer.state_dict()}
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return {"full_optimizer": get_optimizer_state_dict(self.discriminator, self.optimizer, options=_full_options())}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output; a sharded discriminator takes the full state (every process)."""
        if "full_optimizer" in state:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True)
            set_optimizer_state_dict(self.discriminator, self.optimizer, state["full_optimizer"], options=options)
        elif self.sharded:
            raise GadError(
                "this checkpoint holds a replicated discriminator's optimizer: resume with "
                "discriminator_sharding=replicate"
            )
        else:
            self.optimizer.load_state_dict(state["optimizer"])


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def pad_passes(disc: Discriminator, count: int, *, backward: bool = False) -> None:
    """``count`` forward passes (and zero-gradient backward passes, when ``backward``) on a one-token sequence: what a
    process with fewer sequences runs so that every process of a sharded discriminator makes as many passes."""
    input_ids = torch.full((1, 1), disc.tokenizer.pad_token_id, dtype=torch.long, device=disc.device)
    with torch.set_grad_enabled(backward):
        for _ in range(count):
            scores = disc(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
            if backward:
                scores.backward(torch.zeros_like(scores))


def shard_discriminator(disc: Discriminator, mesh) -> None:
    """FSDP2 over ``mesh``: each transformer layer, the backbone, the head (``score``, or an encoder's
    ``classifier``) and then the discriminator itself (the rest) are their own units. Call after moving it to its
    device and :meth:`Discriminator.train_top_layers`, before building the :class:`DiscriminatorUpdater`."""
    from torch.distributed.fsdp import fully_shard

    model = disc.model
    backbone = getattr(model, model.base_model_prefix, None)
    head = getattr(model, "classifier" if disc.is_encoder else "score", None)
    layers = _decoder_layers(model)
    units = [*(layers if layers is not None else []), backbone, head]
    for module in units:
        if isinstance(module, torch.nn.Module) and any(True for _ in module.parameters()):
            fully_shard(module, mesh=mesh)
    fully_shard(disc, mesh=mesh)


def full_model_state_dict(disc: Discriminator) -> dict[str, torch.Tensor]:
    """The model's whole state dict, gathered from a sharded discriminator onto the CPU of the main process (a
    collective: every process calls it; the others get an empty dict). Keys as in ``disc.model.state_dict()``."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(disc, options=_full_options())
    return {name.removeprefix("model."): tensor for name, tensor in state.items()}


def load_full_model_state_dict(disc: Discriminator, state: dict[str, torch.Tensor]) -> None:
    """Load a whole model state dict (``disc.model``'s keys) into a sharded discriminator, on every process."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    full = {f"model.{name}": tensor for name, tensor in state.items()}
    set_model_state_dict(disc, full, options=StateDictOptions(full_state_dict=True))


def _is_sharded(parameter: torch.Tensor) -> bool:
    """Whether FSDP2 shards this parameter (a DTensor), which then reduces its gradient itself."""
    from torch.distributed.tensor import DTensor

    return isinstance(parameter, DTensor)


def _is_fsdp(module: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _position_limit(model: torch.nn.Module) -> int | None:
    """How many tokens the model can read: ``max_position_embeddings``, less the offset of models whose position ids
    start after the padding index (RoBERTa's family: 514 embeddings, 512 usable). None when the config has no limit."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return None
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, torch.nn.Embedding):
            if module.padding_idx is not None:
                limit -= module.padding_idx + 1
            break
    return limit


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The backbone's list of transformer layers: the module list as long as ``config.num_hidden_layers``."""
    count = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    return None


def _disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    for name in ("attention_dropout", "hidden_dropout", "classifier_dropout", "resid_pdrop", "embd_pdrop"):
        if hasattr(model.config, name) and isinstance(getattr(model.config, name), float):
            setattr(model.config, name, 0.0)
