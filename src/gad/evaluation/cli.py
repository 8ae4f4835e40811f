"""``gad generate``, ``gad eval`` and ``gad report``: answers, scores and a report for students and checkpoints."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from gad.api.client import api_key_for
from gad.errors import GadError
from gad.evaluation.evaluate import JUDGE_PREFIX, GenerationConfig, JudgeConfig, evaluate
from gad.evaluation.results import EVAL_FILE, EvalResults
from gad.evaluation.selection import select_checkpoint
from gad.layout import SELECTION_EVAL
from gad.options import add_dataclass_arguments, dataclass_from_args

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    _register_generate(subparsers)
    _register_eval(subparsers)
    _register_report(subparsers)


def _generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation (model folders)")
    add_dataclass_arguments(group, GenerationConfig)
    group.add_argument("--limit", type=int, default=None, help="use only the first N prompts of each set")


def _register_generate(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="answer a prompt set with a local model (greedy by default)",
        description="Batched answers for a prompt set (a name such as vicuna80, or a file) with a Hugging Face model "
        "folder; writes JSONL rows {id, prompt, response} that `gad eval` reads as an answer file.",
    )
    parser.add_argument("--model", required=True, type=Path, help="model folder (student/, checkpoint-N/)")
    parser.add_argument("--prompts", required=True, help="prompt set name or file")
    parser.add_argument("--out", required=True, type=Path, help="answers JSONL to write")
    _generation_options(parser)
    parser.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from gad.evaluation.generate import generate_file

    generation = dataclass_from_args(GenerationConfig, args)
    path = generate_file(args.model, args.prompts, args.out, limit=args.limit, **asdict(generation))
    print(f"wrote {path}")
    return 0


def _register_eval(subparsers) -> None:
    from gad.evaluation.prompt_sets import PROMPT_SETS

    parser = subparsers.add_parser(
        "eval",
        help="judge score, pairwise win rate and judge-free metrics; --select picks a run's best checkpoint",
        description="Evaluate models (folders are answered greedily, answer files are read) on prompt sets with the "
        "paper's LLM-judge protocol (score = model / (model + judge reference) x 100), pairwise win/tie/loss in both "
        "orders, and judge-free metrics against the teacher. Writes OUT/eval.json. Named sets: "
        + ", ".join(PROMPT_SETS)
        + ".",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="model folder, answer file, or folder of <set>.jsonl answers (repeatable)",
    )
    parser.add_argument(
        "--prompts",
        action="append",
        default=[],
        metavar="SET",
        help="prompt set name or file (repeatable or comma-separated; default vicuna80)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default eval/, or RUN_DIR/selection-eval)"
    )
    parser.add_argument(
        "--teacher", type=Path, default=None, help="the teacher's answers (file, or folder of <set>.jsonl)"
    )
    parser.add_argument("--no-judge-teacher", action="store_true", help="do not give the teacher its own row")
    parser.add_argument("--pairwise", action="append", default=[], metavar="A:B", help="judge model A against B")
    parser.add_argument("--discriminator", type=Path, default=None, help="discriminator folder: report its scores")
    parser.add_argument("--tokenizer", type=Path, default=None, help="tokenizer for lengths of answer files")
    judge = parser.add_argument_group(
        "judge (any OpenAI-compatible endpoint)", "without --judge-url there is no judge: judge-free metrics only"
    )
    add_dataclass_arguments(judge, JudgeConfig, prefix=JUDGE_PREFIX, defaults={"base_url": None})
    judge.add_argument(
        "--judge-api-key-env",
        default=None,
        metavar="VAR",
        help="environment variable holding the judge's key; default OPENAI_API_KEY, sent to https endpoints only "
        "(a plain-http judge gets a key only when this option names one)",
    )
    select = parser.add_argument_group("checkpoint selection")
    select.add_argument("--select", type=Path, default=None, metavar="RUN_DIR", help="score RUN_DIR's checkpoints")
    select.add_argument(
        "--select-metric", default="judge_score", help="judge_score (default) or a judge-free key such as rouge_l"
    )
    select.add_argument("--max-length-ratio", type=float, default=2.0, help="length guard upper bound (default 2.0)")
    select.add_argument("--min-length-ratio", type=float, default=0.5, help="length guard lower bound (default 0.5)")
    select.add_argument("--no-link", action="store_true", help="do not create RUN_DIR/best")
    _generation_options(parser)
    parser.set_defaults(run=run_eval)


def _judge_config(args: argparse.Namespace, out: Path) -> JudgeConfig | None:
    if not args.judge_base_url:
        return None
    cache = args.judge_cache
    if cache is None and args.teacher is not None and args.teacher.is_file():
        shared = args.teacher.with_name(args.teacher.name + ".cache.sqlite")
        cache = shared if shared.is_file() else None
    return dataclass_from_args(
        JudgeConfig,
        args,
        prefix=JUDGE_PREFIX,
        api_key=api_key_for(args.judge_base_url, args.judge_api_key_env),
        cache=cache or out / "judge-cache.sqlite",
    )


def run_eval(args: argparse.Namespace) -> int:
    sets = [s.strip() for item in (args.prompts or ["vicuna80"]) for s in item.split(",") if s.strip()]
    generation = dataclass_from_args(GenerationConfig, args)
    if args.select is not None:
        out = args.out or args.select / SELECTION_EVAL
        selection = select_checkpoint(
            args.select,
            sets,
            judge=_judge_config(args, out),
            teacher=args.teacher,
            metric=args.select_metric,
            max_length_ratio=args.max_length_ratio,
            min_length_ratio=args.min_length_ratio,
            limit=args.limit,
            generation=generation,
            tokenizer=args.tokenizer,
            out_dir=out,
            link=not args.no_link,
        )
        for c in selection.candidates:
            mark = "*" if c["name"] == selection.chosen else " "
            score = "–" if c["score"] is None else f"{c['score']:.3f}"
            ratio = "–" if c["len_ratio"] is None else f"{c['len_ratio']:.2f}"
            print(f"{mark} {c['name']:<24} {args.select_metric}={score} len_ratio={ratio} {c['reason']}")
        print(f"chosen: {selection.chosen} -> {selection.best or selection.chosen_path}")
        return 0
    if not args.model and args.teacher is None:
        raise GadError("pass --model (repeatable) or --teacher, or --select RUN_DIR")
    pairs = []
    for item in args.pairwise:
        first, sep, second = item.partition(":")
        if not sep or not first or not second:
            raise GadError(f"--pairwise takes A:B (two model names), got {item!r}")
        pairs.append((first, second))
    out = args.out or Path("eval")
    report = evaluate(
        args.model,
        sets,
        out_dir=out,
        judge=_judge_config(args, out),
        teacher=args.teacher,
        discriminator=args.discriminator,
        pairs=pairs,
        tokenizer=args.tokenizer,
        limit=args.limit,
        generation=generation,
        judge_teacher=not args.no_judge_teacher,
    )
    print(summary_text(report))
    print(f"wrote {out / EVAL_FILE}")
    return judge_verdict(report, out)


def judge_verdict(report: EvalResults, out: Path) -> int:
    """Print how many judge requests failed; a judge that answered none of them is an error (exit 1), not a result."""
    if not report.judge:
        return 0
    failed, asked = report.judge_counts()
    print(f"judge: {failed} of {asked} ratings failed (reasons in {out / 'ratings'} and eval.json)")
    if asked and failed == asked:
        print("error: every judge request failed: check --judge-url, --judge-model and the key", file=sys.stderr)
        return 1
    return 0


def summary_text(report: EvalResults) -> str:
    """A short console table: judge score (or ROUGE-L) and length ratio per model and set."""
    key = "judge_score" if report.judge else "rouge_l"
    lines = [f"{'model':<20}" + "".join(f"{s:>22}" for s in report.sets)]
    for model in report.order:
        cells = []
        for s in report.sets:
            r = report.results[model][s]
            value, ratio = r.get(key), r.get("len_ratio")
            text = ("–" if value is None else f"{value:.2f}") + (f" (x{ratio:.2f} len)" if ratio else "")
            cells.append(f"{text:>22}")
        lines.append(f"{model:<20}" + "".join(cells))
    for p in report.pairwise:
        lines.append(f"{p['first']} vs {p['second']} on {p['set']}: {p['win']}/{p['tie']}/{p['loss']} W/T/L")
    return f"{key} per model and set\n" + "\n".join(lines)


def _register_report(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="an HTML report (and a Markdown twin) of runs and evaluations",
        description="One self-contained HTML file: training curves from RUN/<stage>/metrics.jsonl, evaluation tables "
        "from eval.json (gad eval --out), pairwise results, checkpoint selection and example answers side by side.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, eval folders or eval.json files")
    parser.add_argument("--out", type=Path, default=None, help="HTML file (default FIRST_PATH/report.html)")
    parser.add_argument("--title", default="GAD report", help="page title (default %(default)s)")
    parser.add_argument("--examples", type=int, default=3, help="example prompts per set (default 3)")
    parser.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from gad.evaluation.report import build_report

    first = args.paths[0]
    out = args.out or ((first if first.is_dir() else first.parent) / "report.html")
    html_path, md_path = build_report(args.paths, out, title=args.title, examples_per_set=args.examples)
    print(f"wrote {html_path} and {md_path}")
    return 0
