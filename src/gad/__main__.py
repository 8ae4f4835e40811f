"""`python -m gad` runs the `gad` command line."""

import sys

from gad.cli import main

sys.exit(main())
