"""Evaluation prompt sets by name (the paper's test sets and their open stand-ins) or by file.

Every named set ships with the package (``gad/resources/prompt_sets/``, licences in its README); anything that is not
a known name is read as a prompt file.
"""

from __future__ import annotations

from pathlib import Path

from gad.data import PromptRow, load_prompts
from gad.errors import GadError
from gad.resources import resource

# name -> (file name, what it stands for in the paper, licence)
PROMPT_SETS: dict[str, tuple[str, str, str]] = {
    "vicuna80": ("vicuna80.jsonl", "Vicuna, 80 questions", "Apache-2.0"),
    "selfinst252": ("selfinst252.jsonl", "SelfInst, 252 user-oriented tasks", "Apache-2.0"),
    "dolly500": ("dolly500.jsonl", "Dolly, MiniLLM's 500-sample test subset", "CC BY-SA 3.0"),
    "mtbench80": ("mtbench80.jsonl", "MT-Bench, first turns", "Apache-2.0"),
    "koala180": ("koala180.jsonl", "Koala test set", "Apache-2.0 (academic use, no training)"),
    "arena_hard500": ("arena_hard500.jsonl", "Arena-Hard, open stand-in for LMSYS-Chat", "Apache-2.0"),
}


def resolve_prompt_set(name_or_path: str | Path) -> tuple[str, Path]:
    """Return ``(set name, file)``; a known name is a shipped file, anything else is a path."""
    text = str(name_or_path)
    if text in PROMPT_SETS:
        return text, resource("prompt_sets", PROMPT_SETS[text][0])
    path = Path(text).expanduser()
    if path.is_file() or path.is_dir():
        return path.stem if path.is_file() else path.name, path
    raise GadError(f"unknown prompt set '{text}': not a file, and not one of {', '.join(PROMPT_SETS)}")


def load_prompt_set(name_or_path: str | Path, limit: int | None = None) -> tuple[str, list[PromptRow]]:
    """Load a prompt set by name or file; ``limit`` keeps the first N prompts (quick runs, smoke tests)."""
    name, path = resolve_prompt_set(name_or_path)
    rows, _ = load_prompts(path)
    if limit is not None:
        rows = rows[:limit]
    return name, rows


def reference_answers(rows: list[PromptRow]) -> dict[str, str]:
    """The set's own ``reference`` answers (human or model written, see the data README), by prompt id."""
    return {row.id: row.record["reference"] for row in rows if isinstance(row.record.get("reference"), str)}
