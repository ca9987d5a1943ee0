"""Where a command's result goes: stdout, one line at a time (logs go to stderr)."""

from __future__ import annotations

import sys


def out(text: str = "") -> None:
    """Write a line of a command's result to stdout."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
