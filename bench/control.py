"""Control-plane timings: function attach (new and reused ENI), apply of many ENIs, CLI start.

Contract: wall-clock times of what an operator runs, medians of several runs, against a node that
is up in the benchmark topology, with a store of this run's own (ENIPLANE_STATE_DIR).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

from . import topo as T


def _cli(node: str | None, *args: str) -> float:
    t = time.monotonic()
    subprocess.run([sys.executable, "-m", "eniplane", *args,
                    *(["--node", node] if node else [])], check=True, capture_output=True)
    return time.monotonic() - t


def world(n_enis: int) -> dict:
    """A declarative state with n_enis distinct (subnet, group) pairs in one VPC."""
    per_subnet = 250
    n_subnets = max(1, -(-n_enis // per_subnet))
    n_groups = min(per_subnet, n_enis)
    return {
        "vpcs": [{"id": "vpc-bench", "cidr": "10.0.0.0/8", "iface": "vpca",
                  "gateway": T.SERVER}],
        "subnets": [{"id": f"sub-{i}", "vpc": "vpc-bench", "cidr": f"10.{1 + i // 256}.{i % 256}.0/24"}
                    for i in range(n_subnets)],
        "security_groups": [{"id": f"sg-{g}", "vpc": "vpc-bench",
                             "egress": [{"proto": "tcp", "ports": str(1000 + g),
                                         "cidr": "10.0.0.0/16"}], "ingress": []}
                            for g in range(n_groups)],
        "workers": [T.GEN_IP],
        "functions": [{"name": f"fn-{i}", "subnets": [f"sub-{i // per_subnet}"],
                       "security_groups": [f"sg-{i % n_groups}"]} for i in range(n_enis)],
    }


def run(n_enis: int = 10_000, repeats: int = 5, progress=print) -> dict:
    res: dict = {}
    state = tempfile.mkdtemp(prefix="eniplane-bench-state-")
    old = os.environ.get("ENIPLANE_STATE_DIR")
    os.environ["ENIPLANE_STATE_DIR"] = state
    try:
        with T.Topo() as t:
            t.eniplane().close()
            node = t.node_name
            doc = world(4)
            path = os.path.join(state, "small.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(doc, f)
            _cli(node, "apply", "-f", path)
            new, reused = [], []
            for i in range(repeats):
                new.append(_cli(node, "function", "attach", f"new-{i}", "--subnet", "sub-0",
                                "--sg", f"sg-{i % 4}", "--sg", f"sg-{(i + 1) % 4}"))
                _cli(node, "function", "detach", f"new-{i}")
                reused.append(_cli(node, "function", "attach", f"re-{i}", "--subnet", "sub-0",
                                   "--sg", "sg-0"))
            res["attach_new_eni_s"] = statistics.median(new)
            res["attach_reused_eni_s"] = statistics.median(reused)
            progress(f"attach: new ENI {res['attach_new_eni_s']:.3f} s, "
                     f"reused {res['attach_reused_eni_s']:.3f} s")
            big = os.path.join(state, "big.yaml")
            with open(big, "w") as f:
                yaml.safe_dump(world(n_enis), f)
            res["apply_enis"] = n_enis
            res["apply_s"] = _cli(node, "apply", "-f", big)
            res["apply_noop_s"] = _cli(node, "apply", "-f", big)
            progress(f"apply {n_enis} ENIs: {res['apply_s']:.2f} s (again: "
                     f"{res['apply_noop_s']:.2f} s)")
            res["cli_help_s"] = statistics.median(
                [_cli(None, "--help") for _ in range(repeats)])
            res["cli_stats_s"] = statistics.median(
                [_cli(node, "stats", "-o", "json") for _ in range(repeats)])
            progress(f"cold start: --help {res['cli_help_s']:.3f} s, stats "
                     f"{res['cli_stats_s']:.3f} s")
    finally:
        if old is None:
            os.environ.pop("ENIPLANE_STATE_DIR", None)
        else:
            os.environ["ENIPLANE_STATE_DIR"] = old
        import shutil
        shutil.rmtree(state, ignore_errors=True)
    return res
