"""Entry point for `python -m promptdex`."""

import sys

from promptdex.cli import main

sys.exit(main())
