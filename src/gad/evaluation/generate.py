"""Batched answer generation with a local Hugging Face model (the student, a checkpoint, or the tiny model).

The paper evaluates with greedy decoding and up to 1,536 response tokens (arXiv:2511.10643, §3.1), so greedy is the
default. Prompts go through the tokenizer's chat template with the generation prompt, left-padded so that every row of a
batch ends where its answer begins. Answers are written as JSONL rows ``{"id", "prompt", "response"}`` that
``gad eval`` reads back as an answer file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from gad.data import PromptRow
from gad.errors import GadError

log = logging.getLogger(__name__)


def is_model_folder(path: str | Path) -> bool:
    """A Hugging Face model folder has a ``config.json`` at its root."""
    return (Path(path) / "config.json").is_file()


def pick_device(device: str | None = None) -> str:
    """``cuda`` when available unless told otherwise; evaluation runs on CPU for the tiny models."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(folder: str | Path, device: str | None = None):
    """Load ``(model, tokenizer)`` for generation; fails with one line when the folder is not a model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not folder.exists():
        raise GadError(f"model folder not found: {folder}")
    if not is_model_folder(folder):
        raise GadError(f"{folder} is not a Hugging Face model folder (no config.json); pass a checkpoint or student/")
    device = pick_device(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.chat_template is None:
        raise GadError(f"{folder}: the tokenizer has no chat template; add one to tokenizer_config.json")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    return model, tokenizer


def generate_answers(
    model_dir: str | Path,
    prompts: list[PromptRow],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> list[dict[str, Any]]:
    """Answer every prompt with the model in ``model_dir``; ``temperature`` 0 means greedy (the paper's setting).

    Returns rows ``{"id", "prompt", "response", "finish_reason", "response_tokens"}`` in the prompts' order.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise GadError("batch_size and max_new_tokens must be at least 1")
    model, tokenizer = load_model(model_dir, device)
    return generate_with(
        model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens, temperature=temperature,
        top_p=top_p, seed=seed, progress=progress, desc=desc or f"generate {Path(model_dir).name}",
    )  # fmt: skip


def generate_with(
    model,
    tokenizer,
    prompts: list[PromptRow],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    desc: str = "generate",
) -> list[dict[str, Any]]:
    """:func:`generate_answers` with a model already in memory (a model being trained, say: it is put in eval mode
    for the call and back afterwards). Prompts are sorted by length so that batches waste little padding."""
    import torch
    from tqdm.auto import tqdm

    was_training, padding_side, pad_token = model.training, tokenizer.padding_side, tokenizer.pad_token
    model.eval()
    tokenizer.padding_side = "left"  # every row of a batch ends where its answer begins
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Seeded sampling here must not reset the random stream of a training run this is called from.
    devices = [model.device] if model.device.type == "cuda" else []
    try:
        texts = [
            tokenizer.apply_chat_template(row.messages, tokenize=False, add_generation_prompt=True) for row in prompts
        ]
        order = sorted(range(len(prompts)), key=lambda i: len(texts[i]))
        results: list[dict[str, Any] | None] = [None] * len(prompts)
        sampling = temperature > 0
        generation_kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": sampling,
            "pad_token_id": tokenizer.pad_token_id,
        }
        if sampling:
            generation_kwargs.update(temperature=temperature, top_p=top_p)
        else:  # silence the sampling defaults some generation_config.json files carry
            generation_kwargs.update(temperature=None, top_p=None, top_k=None)
        eos_ids = _eos_ids(model, tokenizer)
        bar = tqdm(total=len(prompts), desc=desc, disable=not progress, unit="prompt")
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                encoded = tokenizer(
                    [texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False
                ).to(model.device)
                output = model.generate(**encoded, **generation_kwargs)
                new_tokens = output[:, encoded["input_ids"].shape[1] :]
                for row_index, tokens in zip(batch, new_tokens, strict=True):
                    results[row_index] = _answer_row(prompts[row_index], tokens.tolist(), eos_ids, tokenizer)
                bar.update(len(batch))
        bar.close()
        return [row for row in results if row is not None]
    finally:
        model.train(was_training)
        tokenizer.padding_side, tokenizer.pad_token = padding_side, pad_token


def _answer_row(prompt: PromptRow, ids: list[int], eos_ids: set[int], tokenizer) -> dict[str, Any]:
    """One answer: the new tokens up to the first end-of-turn (``stop``), or all of them (``length``)."""
    finish = "length"
    for position, token in enumerate(ids):
        if token in eos_ids:
            ids, finish = ids[:position], "stop"
            break
    while ids and ids[-1] == tokenizer.pad_token_id:
        ids.pop()
    return {
        "id": prompt.id,
        "prompt": prompt.messages[-1]["content"],
        "response": tokenizer.decode(ids, skip_special_tokens=True).strip(),
        "finish_reason": finish,
        "response_tokens": len(ids),
    }


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def write_answers(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write answer rows as JSONL (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def read_answers(path: str | Path) -> dict[str, str]:
    """Read an answer file (``id`` plus ``response``, or any response column ``gad.data`` knows) into id -> text."""
    from gad.data import RESPONSE_COLUMNS, read_records

    answers: dict[str, str] = {}
    for where, record in read_records(path):
        if "id" not in record:
            raise GadError(f"{path}, {where}: an answer file needs an 'id' column matching the prompt set")
        column = next((c for c in RESPONSE_COLUMNS if isinstance(record.get(c), str)), None)
        if column is None:
            raise GadError(f"{path}, {where}: no answer column (looked for {', '.join(RESPONSE_COLUMNS)})")
        answers[str(record["id"])] = record[column]
    if not answers:
        raise GadError(f"{path}: no answers")
    return answers


def generate_file(
    model_dir: str | Path, prompts_path: str | Path, out_path: str | Path, *, limit: int | None = None, **kwargs: Any
) -> Path:
    """``gad generate`` as a function: answer a prompt set (a name or a file) and write the JSONL answers."""
    from gad.evaluation.prompt_sets import load_prompt_set

    _, rows = load_prompt_set(prompts_path, limit=limit)
    answers = generate_answers(model_dir, rows, **kwargs)
    return write_answers(out_path, answers)
