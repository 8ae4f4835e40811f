"""``eval.json`` and ``selection.json`` as dataclasses: the one definition of their fields, for writers and readers.

The files are plain JSON objects whose keys are the fields, in field order. Reading ignores keys it does not know
(a newer gad may add some) and fills fields an older file lacks with their defaults; a file without a required
field is not one of these files and is refused with a :class:`GadError`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from gad.errors import GadError

EVAL_FILE = "eval.json"
SELECTION_FILE = "selection.json"
EVAL_VERSION = 1


class JsonRecord:
    """JSON and file forms of a dataclass of plain values, and item access by field name.

    ``record["results"]`` reads like the dicts that earlier versions returned, so callers written against them keep
    working.
    """

    file_name: ClassVar[str]  # for error messages

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        if not isinstance(data, dict):
            raise GadError(f"does not look like {cls.file_name}: a JSON {type(data).__name__}, not an object")
        known = dataclasses.fields(cls)
        missing = [
            f.name
            for f in known
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
        ]
        if missing:
            raise GadError(f"does not look like {cls.file_name}: no {', '.join(missing)}")
        return cls(**{f.name: data[f.name] for f in known if f.name in data})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Self:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise GadError(f"not valid JSON: {error}") from None
        return cls.from_dict(data)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: str | Path) -> Self:
        path = Path(path)
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise GadError(f"cannot read {path}: {error.strerror or error}") from None
        except GadError as error:
            raise GadError(f"{path}: {error}") from None

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)


@dataclass(kw_only=True)
class EvalResults(JsonRecord):
    """``OUT/eval.json``: what ``gad eval`` measured, per model and prompt set, and what produced it.

    ``results[model][set]`` holds the metrics (``judge_score``, ``judge_failures``, ``rouge_l``, ``ngram_f1_N``,
    ``words``, ``tokens``, ``len_ratio``, ``distinct_N``, ``disc_score``, ...; whichever were measured).
    """

    file_name: ClassVar[str] = EVAL_FILE

    version: int = EVAL_VERSION
    created: str = ""
    seconds: float = 0.0
    models: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {path, kind: model|answers|teacher}
    order: list[str] = field(default_factory=list)  # the rows of every table, teacher first
    sets: dict[str, dict[str, Any]]  # name -> {n, source, reference_source}
    judge: dict[str, Any] | None = None  # the judge's model, templates, request counts, cache; None without one
    generation: dict[str, Any] = field(default_factory=dict)  # the GenerationConfig of model folders
    discriminator: str | None = None
    results: dict[str, dict[str, dict[str, Any]]]
    pairwise: list[dict[str, Any]] = field(default_factory=list)  # {first, second, set, win, tie, loss, ...}

    def __post_init__(self) -> None:
        if self.version > EVAL_VERSION:
            raise GadError(f"eval.json version {self.version} is newer than this gad reads ({EVAL_VERSION})")
        if not self.order:  # files from before "order" was written
            self.order = list(self.results)

    def judge_counts(self) -> tuple[int, int]:
        """``(failed, asked)``: the judge's ratings and pairwise verdicts that failed, out of all it was asked for."""
        failed = asked = 0
        for per_set in self.results.values():
            for metrics in per_set.values():
                if "judge_failures" in metrics:
                    failed += metrics["judge_failures"]
                    asked += metrics["judge_failures"] + metrics.get("judge_scored", 0)
        for pair in self.pairwise:
            failed += pair.get("failures", 0)
            asked += pair.get("failures", 0) + sum(pair.get(k, 0) for k in ("win", "tie", "loss"))
        return failed, asked


@dataclass(kw_only=True)
class Selection(JsonRecord):
    """``RUN_DIR/selection.json``: the checkpoint chosen by :func:`gad.evaluation.selection.choose`, and why.

    A candidate is ``{name, path, score, len_ratio, per_set, judge_failures, eligible, reason}``.
    """

    file_name: ClassVar[str] = SELECTION_FILE

    rule: str
    metric: str
    max_length_ratio: float
    min_length_ratio: float
    prompt_sets: list[str]
    length_reference: dict[str, str]  # set -> what the length ratio compares with (teacher, dataset, judge)
    candidates: list[dict[str, Any]]
    chosen: str | None = None
    chosen_path: str | None = None
    eval: str  # the eval.json the scores come from
    best: str | None = None  # RUN_DIR/best, when it was made
    best_kind: str | None = None  # symlink or copy
