"""`gad collect`: ask a black-box teacher (any OpenAI-compatible endpoint) to answer every prompt, exactly once."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from gad.api.client import DEFAULT_KEY_ENV, api_key_for
from gad.collect.collector import CollectConfig, collect
from gad.options import add_dataclass_arguments, dataclass_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="collect teacher responses from an OpenAI-compatible endpoint",
        description="Get N teacher responses for every prompt from POST {base-url}/chat/completions. Answers are "
        "cached in SQLite as they arrive, so an interrupted run resumes where it stopped and nothing is paid twice.",
    )
    add_dataclass_arguments(parser, CollectConfig)
    parser.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help=f"environment variable holding the API key; default {DEFAULT_KEY_ENV}, sent to https endpoints only "
        "(plain http, e.g. a local teacher, gets a key only when this option names one); keys are never read from "
        "the command line",
    )
    parser.add_argument("--summary-json", type=Path, default=None, help="also write the summary as JSON here")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # httpx logs every request at INFO; keep the terminal for the progress bar and the summary.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = dataclass_from_args(CollectConfig, args, api_key=api_key_for(args.base_url, args.api_key_env))
    summary = collect(config)
    print(summary.format())
    if args.summary_json:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
    if summary.transient_failures:
        print(
            f"warning: {summary.transient_failures} requests failed with transient errors; rerun the same "
            "command to retry them (answers already collected are kept)"
        )
        return 1
    return 0
