"""The CLI as the e2e tier drives it: `python -m eniplane ... --node NODE` in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

PY = sys.executable


def one_tenant(egress: list[dict[str, Any]], function: bool = True) -> dict[str, Any]:
    """The lab configuration most e2e modules use: VPC A (vpca, 10.0.0.0/16), subnet sub-a,
    group sg-a with these egress rules, worker w1, and function fn-a placed on w1 (unless
    `function` is false: the test attaches it itself)."""
    from eniplane.lab import VPC_CIDR, VPC_GATEWAY, WORKER_IPS

    w1 = WORKER_IPS["w1"]
    doc: dict[str, Any] = {
        "vpcs": [{"id": "vpc-a", "cidr": VPC_CIDR, "iface": "vpca", "gateway": VPC_GATEWAY}],
        "subnets": [{"id": "sub-a", "vpc": "vpc-a", "cidr": "10.0.1.0/24"}],
        "security_groups": [{"id": "sg-a", "vpc": "vpc-a", "ingress": [], "egress": egress}],
        "workers": [w1],
    }
    if function:
        doc["functions"] = [{"name": "fn-a", "subnets": ["sub-a"], "security_groups": ["sg-a"],
                             "workers": [w1]}]
    return doc


@contextmanager
def lab_with_function(tmp: Path, suffix: str, doc: dict[str, Any],
                      env_addr: str = "172.16.0.2") -> Iterator[dict[str, Any]]:
    """A lab, a node configured from `doc` (one function on w1, so one ENI) and one environment
    behind that ENI on w1, behind the kernel's VXLAN device: what most e2e modules start from.
    Yields {lab, node, cli, eni, env (its namespace), tmp}."""
    import json

    from eniplane.lab import Lab

    with Lab.create() as lab:
        node = f"{lab.prefix}-{suffix}"
        with configured_node(lab, node, doc, tmp) as cli:
            (eni,) = json.loads(cli("eni", "list", "-o", "json").stdout)
            env = lab.add_env("a", "w1", eni["vni"], env_addr)
            yield {"lab": lab, "node": node, "cli": cli, "eni": eni, "env": env, "tmp": tmp}


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
