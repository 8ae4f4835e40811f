"""Demo presets: YAML files shipped in ``gad/resources/demo/`` (``demo-NAME.yaml``), or any file of the same shape.

A preset has a ``demo:`` section (teacher, prompts, persona, lengths: :class:`DemoSpec`) and a ``train:`` section, an
ordinary training recipe (see :mod:`gad.training.recipe`) whose student, data, run folder and discriminator the demo
fills in. Relative prompt paths resolve against the preset's own folder first, so a preset runs from any directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gad.errors import GadError
from gad.resources import resource
from gad.training.recipe import resolve_relative

PRESETS = ("tiny", "default", "large")


@dataclass
class DemoSpec:
    """The ``demo:`` section of a preset."""

    name: str
    teacher: str
    student: str
    teacher_system: str
    train_prompts: str
    eval_prompts: str
    n_train: int
    n_eval: int
    max_new_tokens: int = 48
    teacher_temperature: float = 0.7
    teacher_seed: int | None = 0
    teacher_concurrency: int = 8  # requests in flight: the batched teacher server generates them together
    keep_truncated: bool = False
    discriminator_layers: int | None = None
    eval_batch_size: int = 8
    style_starts_with: str | None = None
    style_contains: str | None = None
    style_description: str = ""
    target_seconds: float | None = None
    threads: int | None = None
    source: str = ""
    train: dict[str, Any] = field(default_factory=dict)


def preset_path(name: str) -> Path:
    """The shipped ``demo-NAME.yaml`` for a preset name; anything with a slash or a .yaml suffix is a path."""
    path = Path(name) if name.endswith((".yaml", ".yml")) or "/" in name else resource("demo", f"demo-{name}.yaml")
    if not path.is_file():
        raise GadError(f"demo preset not found: {name} (choose one of {', '.join(PRESETS)} or give a YAML file)")
    return path


def load_preset(name: str) -> DemoSpec:
    path = preset_path(name)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data.get("demo"), dict) or not isinstance(data.get("train"), dict):
        raise GadError(f"{path}: a demo preset has a 'demo:' section and a 'train:' section (a training recipe)")
    known = {f.name for f in dataclasses.fields(DemoSpec)} - {"name", "train", "threads", "source"}
    unknown = sorted(set(data["demo"]) - known)
    if unknown:
        raise GadError(f"{path}: unknown key(s) in 'demo:': {', '.join(unknown)}")
    try:
        spec = DemoSpec(name=path.stem.removeprefix("demo-"), train=data["train"], source=str(path), **data["demo"])
    except TypeError as error:
        raise GadError(f"{path}: {error}") from None
    for key in ("train_prompts", "eval_prompts"):
        setattr(spec, key, str(resolve_relative(getattr(spec, key), path.parent)[0]))
    return spec
