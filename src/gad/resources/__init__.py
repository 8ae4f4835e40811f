"""Files that ship inside the package: prompt sets (with their licences), the tiny tokenizer, judge templates and
the demo presets with their prompts. Code reads them through :func:`resource`, never from a source checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def resource(*parts: str) -> Path:
    """The path of a shipped file, e.g. ``resource("prompt_sets", "vicuna80.jsonl")`` (wheels install unzipped)."""
    return Path(str(resources.files(__name__).joinpath(*parts)))
