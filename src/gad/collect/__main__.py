"""``python -m gad.collect ARGS`` is ``gad collect ARGS`` without importing the other commands (they load torch and
trl), so scripts and tests that only collect start in a fraction of a second."""

import sys

from gad import cli


def main(argv: list[str] | None = None) -> int:
    cli.COMMAND_MODULES = ("gad.collect.cli",)
    return cli.main(["collect", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
