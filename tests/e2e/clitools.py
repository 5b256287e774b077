"""The CLI as the e2e tier drives it: `python -m eniplane ... --node NODE` in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

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


@contextmanager
def configured_node(lab, node: str, doc: dict[str, Any], tmp: Path, up_args: tuple[str, ...] = (),
                    timeout: float = 60) -> Iterator[Callable[..., subprocess.CompletedProcess]]:
    """A node up in the lab's node namespace (with `up_args` added to `up`) and configured by
    `apply -f` from `doc` (written to tmp/conf.yaml), as an operator would; taken down
    afterwards. Yields its CLI runner."""
    import yaml

    cli = node_cli(node, timeout=timeout)
    cli("up", "--netns", lab.node_ns, "--fabric-if", lab.fabric_if, "--fabric-ip", lab.fabric_ip,
        *up_args)
    try:
        (tmp / "conf.yaml").write_text(yaml.safe_dump(doc))
        cli("apply", "-f", str(tmp / "conf.yaml"))
        yield cli
    finally:
        cli("down", check=False)
