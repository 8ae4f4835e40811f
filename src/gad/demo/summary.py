"""The demo's verdict: the persona check per model, the final table, and whether GAD moved the student towards the
teacher, metric by metric; as plain text for the terminal and as a :class:`Section` for the report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gad.demo.presets import DemoSpec
from gad.evaluation.generate import read_answers
from gad.evaluation.report import Section, Table, fmt
from gad.metrics import style_pass

COLUMNS = (  # key, header, digits
    ("style", "persona %", 0),
    ("rouge_l", "ROUGE-L", 3),
    ("ngram_f1_2", "F1-2", 3),
    ("tokens", "tokens", 1),
    ("len_ratio", "len/teacher", 2),
    ("disc_score", "D score", 2),
)


def style_rates(answers: dict[str, Path], spec: DemoSpec) -> dict[str, float | None]:
    """Share of each model's answers (``model -> answer file``) that pass the preset's persona check."""
    if not spec.style_starts_with and not spec.style_contains:
        return {}
    rates: dict[str, float | None] = {}
    for model, path in answers.items():
        passed = [style_pass(text, spec.style_starts_with, spec.style_contains) for text in read_answers(path).values()]
        rates[model] = sum(passed) / len(passed) if passed else None
    return rates


def summary_rows(results: dict[str, dict[str, Any]], rates: dict[str, float | None]) -> list[dict[str, Any]]:
    """One row per model (``model -> metrics`` on the demo's set), the persona rate in percent."""
    rows = []
    for model, result in results.items():
        row = {"model": model, "answered": result.get("answered")}
        for key, _, _ in COLUMNS:
            row[key] = 100 * rates[model] if key == "style" and rates.get(model) is not None else result.get(key)
        if model == "teacher":
            row["rouge_l"] = row["ngram_f1_2"] = row["len_ratio"] = None  # against itself: not informative
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    keys = [(k, h, d) for k, h, d in COLUMNS if any(r.get(k) is not None for r in rows)]
    return [["model", *(h for _, h, _ in keys)], *([r["model"], *(fmt(r.get(k), d) for k, _, d in keys)] for r in rows)]


def goal_checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Is the GAD student closer to the teacher than the initial student, metric by metric?"""
    by_model = {r["model"]: r for r in rows}
    initial, gad, teacher = by_model.get("initial"), by_model.get("gad"), by_model.get("teacher") or {}
    if not initial or not gad:
        return []
    checks = []

    def add(metric: str, before: float, after: float, closer: bool, rule: str) -> None:
        checks.append({"metric": metric, "initial": before, "gad": after, "closer": closer, "rule": rule})

    def towards(key: str, metric: str, digits: int) -> None:
        target = teacher.get(key)
        if target is None:
            add(metric, initial[key], gad[key], gad[key] > initial[key], "higher is closer")
        else:
            closer = abs(gad[key] - target) < abs(initial[key] - target)
            add(metric, initial[key], gad[key], closer, f"closer to the teacher's {target:.{digits}f}")

    if initial.get("style") is not None and gad.get("style") is not None:
        towards("style", "persona %", 0)
    for key, name in (("rouge_l", "ROUGE-L"), ("ngram_f1_2", "F1-2")):
        if initial.get(key) is not None and gad.get(key) is not None:
            add(name, initial[key], gad[key], gad[key] > initial[key], "higher is closer")
    if initial.get("len_ratio") and gad.get("len_ratio"):
        before, after = abs(math.log(initial["len_ratio"])), abs(math.log(gad["len_ratio"]))
        add("len/teacher", initial["len_ratio"], gad["len_ratio"], after < before, "closer to 1 is closer")
    if initial.get("disc_score") is not None and gad.get("disc_score") is not None and teacher.get("disc_score"):
        towards("disc_score", "D score", 2)
    return checks


def verdict_lines(checks: list[dict[str, Any]]) -> list[str]:
    return [
        f"{c['metric']}: initial {_num(c['initial'])} → GAD {_num(c['gad'])} "
        f"({'closer' if c['closer'] else 'NOT closer'}; {c['rule']})"
        for c in checks
    ]


def report_section(spec: DemoSpec, table: list[list[str]], checks: list[dict[str, Any]], timings, total) -> Section:
    """The demo's summary at the top of the HTML and Markdown reports."""
    persona = spec.style_description or "answers that follow the hidden prompt's format"
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    intro = (
        f"Preset '{spec.name}': teacher {spec.teacher} behind a hidden persona prompt, served over HTTP; student "
        f"{spec.student} without it; {spec.n_train} training prompts, {spec.n_eval} held-out prompts; "
        f"persona check: {persona}. Wall time {total:.0f} s ({phases})."
    )
    return Section(
        "Demo summary",
        paragraphs=[intro, "Is the GAD student closer to the teacher than the initial student?"],
        tables=[Table("Held-out prompts", table[0], table[1:])],
        items=verdict_lines(checks),
    )


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"
