"""SIGTERM as an orderly exit, so long-running commands clean up what they made.

Contract: `exit_on_sigterm()` makes SIGTERM raise SystemExit(143) in the main thread; `finally`
blocks and context managers then remove namespaces, pins and processes as they do on errors.
"""

from __future__ import annotations

import signal
import sys


def exit_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
