"""`gad collect`: ask a black-box teacher (any OpenAI-compatible endpoint) to answer every prompt, exactly once."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from gad.collect.collector import DEFAULT_REFUSAL_REGEX, CollectConfig, collect
from gad.errors import GadError

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "collect",
        help="collect teacher responses from an OpenAI-compatible endpoint",
        description="Get N teacher responses for every prompt from POST {base-url}/chat/completions. Answers are "
        "cached in SQLite as they arrive, so an interrupted run resumes where it stopped and nothing is paid twice.",
    )
    parser.add_argument(
        "--prompts",
        type=Path,
        required=True,
        help="prompt file: JSONL, JSON, Parquet, CSV or a "
        "saved datasets folder; a prompt is a string or a list of chat messages",
    )
    parser.add_argument("--model", required=True, help="teacher model name, as the endpoint knows it")
    parser.add_argument("--base-url", required=True, help="API root, e.g. https://api.openai.com/v1")
    parser.add_argument("--out", type=Path, required=True, help="output training file (.jsonl)")
    parser.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help=f"environment variable holding the API key (default {DEFAULT_KEY_ENV}; "
        "keys are never read from the command line)",
    )
    parser.add_argument("--n", type=int, default=1, help="responses per prompt (default 1)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at most (default 8)")
    parser.add_argument("--rpm", type=float, default=None, help="requests per minute at most")
    parser.add_argument("--tpm", type=float, default=None, help="tokens per minute at most (estimated before sending)")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (server default)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling (server default)")
    parser.add_argument("--max-tokens", type=int, default=None, help="longest answer in tokens (server default)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed, for endpoints that honour it")
    parser.add_argument("--system", default=None, help="system prompt added to prompts that have none")
    parser.add_argument("--cache", type=Path, default=None, help="answer cache (default OUT.cache.sqlite)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    parser.add_argument("--max-retries", type=int, default=6, help="retries of a transient failure (default 6)")
    parser.add_argument("--backoff-base", type=float, default=0.5, help="first retry delay in seconds (default 0.5)")
    parser.add_argument("--price-in", type=float, default=None, help="USD per million prompt tokens, for the cost")
    parser.add_argument("--price-out", type=float, default=None, help="USD per million completion tokens")
    parser.add_argument("--dry-run", action="store_true", help="estimate tokens and cost; send nothing")
    parser.add_argument("--prompt-column", default=None, help="column holding the prompt (default: auto)")
    parser.add_argument("--id-column", default="id", help="column holding the prompt id (default id)")
    parser.add_argument(
        "--skip-bad-rows", action="store_true", help="skip and count malformed rows instead of stopping"
    )
    parser.add_argument("--keep-truncated", action="store_true", help="keep answers cut by max tokens")
    parser.add_argument("--keep-empty", action="store_true", help="keep empty answers")
    parser.add_argument(
        "--refusal-regex",
        default=DEFAULT_REFUSAL_REGEX,
        help="drop answers matching this (case-insensitive) regex; '' keeps all",
    )
    parser.add_argument("--keep-duplicates", action="store_true", help="do not de-duplicate identical prompts")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="ask again for prompts that failed for good (e.g. content filter) in an earlier run",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--summary-json", type=Path, default=None, help="also write the summary as JSON here")
    parser.set_defaults(run=run)


def api_key_from_env(name: str | None) -> str | None:
    """The API key from the named environment variable. An explicitly named variable must be set."""
    key = os.environ.get(name or DEFAULT_KEY_ENV)
    if name and not key:
        raise GadError(f"environment variable {name} (named by --api-key-env) is not set or empty")
    return key or None


def run(args: argparse.Namespace) -> int:
    # httpx logs every request at INFO; keep the terminal for the progress bar and the summary.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = CollectConfig(
        prompts=args.prompts,
        out=args.out,
        model=args.model,
        base_url=args.base_url,
        api_key=api_key_from_env(args.api_key_env),
        n=args.n,
        concurrency=args.concurrency,
        rpm=args.rpm,
        tpm=args.tpm,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        top_p=args.top_p,
        seed=args.seed,
        system=args.system,
        cache=args.cache,
        timeout=args.timeout,
        max_retries=args.max_retries,
        backoff_base=args.backoff_base,
        price_in=args.price_in,
        price_out=args.price_out,
        dry_run=args.dry_run,
        prompt_column=args.prompt_column,
        id_column=args.id_column,
        skip_bad_rows=args.skip_bad_rows,
        drop_truncated=not args.keep_truncated,
        drop_empty=not args.keep_empty,
        refusal_regex=args.refusal_regex or None,
        dedupe=not args.keep_duplicates,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
    )
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
