"""The `gad` command line: one sub-command per pipeline stage.

Each sub-command lives in its own module, which exposes ``register(subparsers)``; the module's ``run(args)`` is
called with the parsed arguments. Errors the user can fix (:class:`GadError`) print as one line and exit with 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
import warnings

from gad.errors import GadError
from gad.runtime import stop_on_sigterm

# Pipeline order: collect -> train -> generate/eval -> report; demo runs them all.
COMMAND_MODULES = (
    "gad.collect.cli",
    "gad.serve.server",
    "gad.training.cli",
    "gad.plan_cli",
    "gad.evaluation.cli",
    "gad.demo.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gad",
        description="Black-box on-policy distillation with Generative Adversarial Distillation (GAD): "
        "collect teacher answers, train a student (seqkd | warmup | gad), evaluate and report.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse stops filling KEY=VALUE overrides at the first option: `train ... --resume lr=1e-6` is still valid.
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides.extend(extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not args.debug:
        # Deprecation notices from inside transformers/TRL say nothing a gad user can act on.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    stop_on_sigterm()  # `kill` unwinds like Ctrl-C: teacher servers and other children are stopped on the way out
    try:
        return int(args.run(args) or 0)
    except GadError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, RuntimeError) as error:
        if args.debug or not is_disk_full(error):
            raise
        where = f" writing {error.filename}" if getattr(error, "filename", None) else ""
        print(f"error: the disk is full{where}: free some space, then rerun the same command (with --resume for "
              "`gad train`: it continues from the last complete checkpoint)", file=sys.stderr)  # fmt: skip
        return 2


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC from Python, or torch's own wording for a failed write (its serializer raises RuntimeError)."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(error)
    return "No space left on device" in text or "file write failed" in text


if __name__ == "__main__":
    sys.exit(main())
