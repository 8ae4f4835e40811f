"""`gad demo`: the command line of :func:`gad.demo.run.run_demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from gad.demo.presets import PRESETS

DEFAULT_OUT = "runs/demo"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on a small local teacher: collect, seqkd, warmup, gad, eval, report",
        description="Serve a local teacher behind a hidden persona prompt, collect its answers, train a SeqKD and a "
        "GAD student, evaluate them against the teacher on held-out prompts and write the HTML report. "
        "Presets: tiny (seconds, a random 1 M-parameter model: checks the wiring only), default (SmolLM2-135M, "
        "about 10 minutes on 2 CPU cores), large (more prompts and steps, about 30 minutes). Nothing is downloaded.",
    )
    parser.add_argument(
        "--preset",
        default="default",
        metavar="NAME",
        help=f"{', '.join(PRESETS)} (shipped with gad), or a path to a demo YAML file (default: default)",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of the teacher's sampling and of every training stage (default: the preset's, 0); another seed "
        "is another run end to end, to see how much a result varies",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or training logs, only phase lines")
    parser.add_argument(
        "--threads",
        default="auto",
        metavar="N",
        help="CPU threads for torch (and the teacher server); auto: the cores not already busy (1-minute load "
        "average), at least 1. On a shared machine one thread is several times faster than two fighting for a core",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gad.demo.presets import load_preset
    from gad.demo.run import run_demo
    from gad.runtime import offline, pick_threads

    offline()
    spec = load_preset(args.preset)
    spec.threads = pick_threads(args.threads)
    if args.seed is not None:
        spec.teacher_seed = args.seed
        spec.train["seed"] = args.seed
    run_demo(spec, Path(args.out), quiet=args.quiet)
    return 0  # the pipeline ran; whether GAD moved the student is the table's verdict, not an error
