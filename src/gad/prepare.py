"""Turning loaded (prompt, teacher response) rows into the datasets the trainers read, with counted truncation.

Prompts keep their chat messages (TRL applies the student's chat template). An over-long prompt loses the end of its
last message and an over-long teacher response loses its end; each is counted and logged, never dropped silently.
A cut response is marked unfinished, and the student is then trained on it without the end-of-turn token, so that it
does not learn to stop where the cut was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gad.data import TrainingRow

logger = logging.getLogger(__name__)


@dataclass
class TruncationStats:
    rows: int = 0
    prompts_truncated: int = 0
    responses_truncated: int = 0

    def log(self) -> None:
        logger.info(
            "training data: %d rows, %d prompts truncated to max_prompt_length, %d teacher responses truncated to "
            "max_completion_length",
            self.rows,
            self.prompts_truncated,
            self.responses_truncated,
        )


def prompt_token_count(tokenizer, prompt: list[dict[str, str]]) -> int:
    """Tokens of a prompt rendered with the student's chat template, generation prompt included."""
    return len(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=False))


def truncate_rows(
    rows: list[TrainingRow], tokenizer, *, max_prompt_length: int | None, max_response_length: int | None
) -> tuple[list[TrainingRow], list[int], TruncationStats]:
    """Truncate prompts and responses to their token budgets; also return each response's length in tokens."""
    stats = TruncationStats(rows=len(rows))
    out: list[TrainingRow] = []
    lengths: list[int] = []
    for row in rows:
        prompt = row.prompt
        if max_prompt_length is not None:
            excess = prompt_token_count(tokenizer, prompt) - max_prompt_length
            if excess > 0:
                prompt = _shorten_last_message(tokenizer, prompt, excess)
                stats.prompts_truncated += 1
        response_ids = tokenizer(row.response, add_special_tokens=False)["input_ids"]
        response = row.response
        if max_response_length is not None and len(response_ids) > max_response_length:
            response, response_ids = _decode_head(tokenizer, response_ids[:max_response_length])
            stats.responses_truncated += 1
            finished = False
        else:
            finished = row.finished
        out.append(TrainingRow(prompt, response, row.id, finished))
        lengths.append(len(response_ids))
    stats.log()
    return out, lengths, stats


def _shorten_last_message(tokenizer, prompt: list[dict[str, str]], excess: int) -> list[dict[str, str]]:
    last = prompt[-1]
    ids = tokenizer(last["content"], add_special_tokens=False)["input_ids"]
    keep = max(1, len(ids) - excess)
    return [*prompt[:-1], {**last, "content": _decode_head(tokenizer, ids[:keep])[0]}]


def _decode_head(tokenizer, ids: list[int]) -> tuple[str, list[int]]:
    """Decode the head of a cut text, dropping the byte tokens of a last character cut in half (they decode to
    U+FFFD, which re-encodes to more tokens than it replaced)."""
    for end in range(len(ids), max(len(ids) - 4, 0), -1):  # a UTF-8 character spans at most 4 byte tokens
        text = tokenizer.decode(ids[:end])
        if not text.endswith("\ufffd"):
            return text, ids[:end]
    return tokenizer.decode(ids), ids


def teacher_turn_ids(tokenizer, prompt: list[dict[str, str]], response: str, finished: bool = True):
    """``(prompt_ids, completion_ids)``: the prompt as the student's chat template writes it, generation prompt
    included, then the teacher's turn as the template continues it, end-of-turn included only when the answer is
    finished. What the student must learn to generate, ending where its own samples end."""
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    if not finished:
        return prompt_ids, tokenizer(response, add_special_tokens=False)["input_ids"]
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)
    tail = full[len(head) :].rstrip() if full.startswith(head) else response
    completion_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token
    if eos and eos not in tail:  # a template with no end-of-turn marker: end with EOS, where generation stops
        completion_ids.append(tokenizer.eos_token_id)
    return prompt_ids, completion_ids


def gad_dataset(rows: list[TrainingRow], lengths: list[int]):
    """Columns for the warmup and GAD trainers: ``prompt`` (messages), ``teacher_response``, ``teacher_length``,
    ``teacher_finished``."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [r.prompt for r in rows],
            "teacher_response": [r.response for r in rows],
            "teacher_length": lengths,
            "teacher_finished": [r.finished for r in rows],
        }
    )


def sft_dataset(rows: list[TrainingRow], tokenizer):
    """Pre-tokenised SeqKD data (``input_ids``, ``completion_mask``): the loss falls on the teacher's turn only, and
    an unfinished answer carries no end-of-turn token."""
    from datasets import Dataset

    input_ids, completion_mask = [], []
    for row in rows:
        prompt_ids, completion_ids = teacher_turn_ids(tokenizer, row.prompt, row.response, row.finished)
        input_ids.append(prompt_ids + completion_ids)
        completion_mask.append([0] * len(prompt_ids) + [1] * len(completion_ids))
    return Dataset.from_dict({"input_ids": input_ids, "completion_mask": completion_mask})
