"""The CLI as the e2e tier drives it: `python -m eniplane ... --node NODE` in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from typing import Callable

PY = sys.executable


def node_cli(node: str, timeout: float = 120) -> Callable[..., subprocess.CompletedProcess]:
    """A runner for one node's commands; check=True asserts exit 0 and shows stderr if not."""
    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([PY, "-m", "eniplane", *args, "--node", node],
                           capture_output=True, text=True, timeout=timeout)
        if check:
            assert p.returncode == 0, p.stderr
        return p

    return cli
