"""Checkpoint selection: the best judge score among checkpoints whose answers stay near the teacher's length.

Why not the reward or the losses: in GAD the reward oscillates around zero by design (the discriminator keeps
catching up), so it says nothing about progress; the authors pick "the checkpoint that achieved the highest GPT-4o
score and whose response length is within an acceptable range" (the GAD paper, arXiv:2511.10643, §3.1). The length guard
matters because a judge favours longer answers and a hacked reward shows up first as longer answers.

Rule: for every checkpoint, the mean over prompt sets of the judge score and of the length ratio (mean answer length
over mean teacher length, in tokens). Candidates with ``min_length_ratio <= ratio <= max_length_ratio`` compete; the
highest score wins, the earliest checkpoint on a tie. The choice and every candidate's numbers go to
``RUN_DIR/selection.json``; ``RUN_DIR/best`` becomes a symlink to the chosen folder (a copy where links fail).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from gad.errors import GadError
from gad.evaluation.evaluate import GenerationConfig, JudgeConfig, ModelSpec, evaluate
from gad.evaluation.generate import is_model_folder
from gad.evaluation.results import EVAL_FILE, SELECTION_FILE, Selection
from gad.layout import SELECTION_EVAL, STAGE_NAMES, RunLayout, StageLayout

log = logging.getLogger(__name__)

STAGES = tuple(reversed(STAGE_NAMES))  # the adversarial stage's checkpoints first
COPY_MARKER = ".gad-best-copy"


def find_checkpoints(run_dir: str | Path) -> list[tuple[str, Path]]:
    """``(name, folder)`` for every model checkpoint of a run, in training order.

    ``run_dir`` is a stage folder (``RUN/gad``) holding ``checkpoint-N/`` and ``student/``, or a run folder whose
    stage folders hold them (then names are ``gad/checkpoint-N``).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GadError(f"run folder not found: {run_dir}")
    found = _stage_checkpoints(run_dir, prefix="")
    if not found:
        for stage in STAGES:
            if (run_dir / stage).is_dir():
                found += _stage_checkpoints(run_dir / stage, prefix=f"{stage}/")
    if not found:
        raise GadError(f"{run_dir}: no checkpoint-N/ or student/ model folders (nor in {', '.join(STAGES)}/)")
    return found


def _stage_checkpoints(folder: Path, prefix: str) -> list[tuple[str, Path]]:
    stage = StageLayout(folder)
    # Only checkpoints whose save finished; runs from before completion markers existed have none marked.
    checkpoints = stage.checkpoints(complete_only=True) or stage.checkpoints()
    found = [(f"{prefix}{path.name}", path) for path in checkpoints if is_model_folder(path)]
    if is_model_folder(stage.student):
        found.append((f"{prefix}{stage.student.name}", stage.student))
    return found


def choose(
    candidates: list[dict[str, Any]],
    *,
    max_length_ratio: float,
    min_length_ratio: float = 0.0,
) -> dict[str, Any] | None:
    """Mark each candidate ``eligible`` (with a ``reason`` when not) and return the best eligible one.

    A candidate is a dict with ``name``, ``score`` (higher is better, ``None`` = unscored) and ``len_ratio``
    (``None`` = no teacher length to compare with, which passes the guard).
    """
    best = None
    for candidate in candidates:
        score, ratio = candidate.get("score"), candidate.get("len_ratio")
        if score is None:
            candidate["eligible"], candidate["reason"] = False, "no score (every judge rating failed?)"
        elif ratio is not None and ratio > max_length_ratio:
            candidate["eligible"], candidate["reason"] = False, f"length ratio {ratio:.2f} > {max_length_ratio:g}"
        elif ratio is not None and ratio < min_length_ratio:
            candidate["eligible"], candidate["reason"] = False, f"length ratio {ratio:.2f} < {min_length_ratio:g}"
        else:
            candidate["eligible"], candidate["reason"] = True, ""
            if best is None or score > best["score"]:
                best = candidate
    return best


def select_checkpoint(
    run_dir: str | Path,
    prompt_sets: list[str],
    *,
    judge: JudgeConfig | None = None,
    teacher: str | Path | None = None,
    metric: str = "judge_score",
    max_length_ratio: float = 2.0,
    min_length_ratio: float = 0.5,
    limit: int | None = None,
    generation: GenerationConfig | None = None,
    tokenizer: str | Path | None = None,
    out_dir: str | Path | None = None,
    link: bool = True,
    progress: bool = True,
) -> Selection:
    """Evaluate a run's checkpoints, choose one by :func:`choose`, write ``selection.json`` and ``RUN_DIR/best``.

    ``metric`` is ``judge_score`` (the paper's rule; needs ``judge``) or a judge-free key of ``eval.json`` such as
    ``rouge_l`` for runs without a judge. Returns the content of ``selection.json``.
    """
    run_dir = Path(run_dir)
    if metric == "judge_score" and judge is None:
        raise GadError("selection by judge score needs a judge (--judge-url, --judge-model) or --select-metric rouge_l")
    if max_length_ratio <= 0 or min_length_ratio < 0 or min_length_ratio > max_length_ratio:
        raise GadError("length ratios must satisfy 0 <= min_length_ratio <= max_length_ratio and max > 0")
    checkpoints = find_checkpoints(run_dir)
    specs = [ModelSpec(name.replace("/", "__"), path) for name, path in checkpoints]
    out = Path(out_dir) if out_dir else run_dir / SELECTION_EVAL
    report = evaluate(
        specs,
        prompt_sets,
        out_dir=out,
        judge=judge,
        teacher=teacher,
        tokenizer=tokenizer,
        limit=limit,
        generation=generation,
        judge_teacher=False,
        progress=progress,
    )
    candidates = []
    for (name, path), spec in zip(checkpoints, specs, strict=True):
        per_set = report.results[spec.name]
        scores = [r.get(metric) for r in per_set.values()]
        ratios = [r.get("len_ratio") for r in per_set.values()]
        candidates.append(
            {
                "name": name,
                "path": str(path),
                "score": _mean_or_none(scores),
                "len_ratio": _mean_present(ratios),
                "per_set": {s: {"score": r.get(metric), "len_ratio": r.get("len_ratio")} for s, r in per_set.items()},
                "judge_failures": sum(r.get("judge_failures", 0) for r in per_set.values()),
            }
        )
    best = choose(candidates, max_length_ratio=max_length_ratio, min_length_ratio=min_length_ratio)
    selection = Selection(
        rule=f"highest mean {metric} over the prompt sets among checkpoints with "
        f"{min_length_ratio:g} <= mean length ratio to the teacher's <= {max_length_ratio:g}",
        metric=metric,
        max_length_ratio=max_length_ratio,
        min_length_ratio=min_length_ratio,
        prompt_sets=list(report.sets),
        length_reference={s: info["reference_source"] for s, info in report.sets.items()},
        candidates=candidates,
        chosen=best["name"] if best else None,
        chosen_path=best["path"] if best else None,
        eval=str(out / EVAL_FILE),
    )
    if best is not None and link:
        selection.best, selection.best_kind = _link_best(run_dir, Path(best["path"]))
    selection.write(run_dir / SELECTION_FILE)
    if best is None:
        raise GadError(
            f"no checkpoint of {run_dir} passes the length guard ({min_length_ratio:g}..{max_length_ratio:g} x the "
            f"teacher's length); see {run_dir / SELECTION_FILE} or widen --max-length-ratio"
        )
    return selection


def _mean_or_none(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if len(present) == len(values) and present else None


def _mean_present(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _link_best(run_dir: Path, chosen: Path) -> tuple[str, str]:
    """Point ``RUN_DIR/best`` at the chosen folder: a relative symlink, or a copy where symlinks are refused."""
    best = RunLayout(run_dir).best
    if best.is_symlink() or best.is_file():
        best.unlink()
    elif best.is_dir():
        if not (best / COPY_MARKER).exists():
            raise GadError(f"{best} exists and was not made by gad; move it away to select a checkpoint")
        shutil.rmtree(best)
    try:
        best.symlink_to(chosen.resolve().relative_to(run_dir.resolve()), target_is_directory=True)
        return str(best), "symlink"
    except (OSError, ValueError, NotImplementedError):
        shutil.copytree(chosen, best)
        (best / COPY_MARKER).write_text(str(chosen), encoding="utf-8")
        return str(best), "copy"
