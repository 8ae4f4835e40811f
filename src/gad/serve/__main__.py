"""``python -m gad.serve MODEL ...``: the same as ``gad serve-teacher`` without loading the other commands."""

import sys

from gad.serve.server import main

sys.exit(main())
