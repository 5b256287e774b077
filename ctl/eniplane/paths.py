"""Where a node keeps its pins and its state.

Contract: several nodes live side by side on one machine, each under its own name: pins in
/sys/fs/bpf/eniplane/<node>/{maps,progs}, state in /var/lib/eniplane/<node>/ (or
$ENIPLANE_STATE_DIR/<node>). Names are validated so that they can never escape those directories.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import UsageError

BPFFS = "/sys/fs/bpf"
PIN_ROOT = Path(BPFFS) / "eniplane"
DEFAULT_NODE = "default"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")


def check_node_name(node: str) -> str:
    if not _NAME.match(node):
        raise UsageError(f"invalid node name {node!r}: use 1-32 letters, digits, '.', '_' or '-'")
    return node


def pin_dir(node: str) -> Path:
    return PIN_ROOT / check_node_name(node)


def maps_dir(node: str) -> Path:
    return pin_dir(node) / "maps"


def progs_dir(node: str) -> Path:
    return pin_dir(node) / "progs"


def state_dir(node: str) -> Path:
    base = Path(os.environ.get("ENIPLANE_STATE_DIR", "/var/lib/eniplane"))
    return base / check_node_name(node)
