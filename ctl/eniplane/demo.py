"""`make demo`: the main job end to end in a throw-away lab.

Contract: builds the lab, brings a node up, applies examples/two-tenants.yaml (two tenants whose
VPCs both use 10.0.0.0/16, three functions, two of them sharing an ENI) and shows real traffic from environments behind the kernel's VXLAN device: HTTP and UDP that work,
a port the security groups refuse, a ping, and the counters. Every step prints one line; any
failure stops the demo with a message and still cleans up, unless KEEP=1 leaves it running.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .errors import EniplaneError

PY = sys.executable


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "two-tenants.yaml"


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def eniplane(node: str, *args: str) -> str:
    """Run the CLI as an operator would; its tables go straight to the terminal."""
    p = subprocess.run([PY, "-m", "eniplane", *args, "--node", node], stdout=subprocess.PIPE,
                       text=True)
    if p.returncode != 0:
        raise EniplaneError(f"eniplane {' '.join(args)} failed (exit {p.returncode})")
    sys.stdout.write(p.stdout)
    return p.stdout


def main() -> int:
    from .lab import VPC_SERVER, Lab

    keep = os.environ.get("KEEP") == "1"
    from eniplane.signals import exit_on_sigterm

    exit_on_sigterm()  # a killed run still removes its namespaces and pins
    t0 = time.monotonic()
    step("building the lab: a node, a fabric, two workers, two VPCs that both use 10.0.0.0/16")
    lab = Lab.create()
    node = f"{lab.prefix}-demo"
    ok = up = False
    os.environ.setdefault("ENIPLANE_STATE_DIR", f"/run/eniplane/demo-state/{lab.prefix}")
    try:
        step(f"eniplane up: compile the datapath, pin it, attach it to fab0 in {lab.node_ns}")
        eniplane(node, "up", "--netns", lab.node_ns, "--fabric-if", lab.fabric_if,
                 "--fabric-ip", lab.fabric_ip)
        up = True
        step(f"eniplane apply -f examples/{EXAMPLE.name}: two customers, three functions")
        eniplane(node, "apply", "-f", str(EXAMPLE))
        step("eniplane function list: acme-api and acme-worker have the same subnet and groups")
        eniplane(node, "function", "list")
        step("eniplane eni list: so they share one ENI; globex-report has its own")
        enis = json.loads(subprocess.run([PY, "-m", "eniplane", "eni", "list", "-o", "json",
                                          "--node", node], capture_output=True, text=True,
                                         check=True).stdout)
        eniplane(node, "eni", "list")
        vni = {f: e["vni"] for e in enis for f in e["functions"]}
        step("starting three environments behind the workers' Linux VXLAN devices")
        envs = {"acme-api": lab.add_env("acme-api", "w1", vni["acme-api"], "172.16.0.2"),
                "acme-worker": lab.add_env("acme-worker", "w2", vni["acme-worker"], "172.16.0.3"),
                "globex-report": lab.add_env("globex-report", "w2", vni["globex-report"],
                                             "172.16.0.2")}
        for fn, ns in envs.items():
            print(f"    {fn:14} on {lab.envs[fn]['worker']}, address {lab.envs[fn]['addr']}, "
                  f"VNI {vni[fn]}")
        step("HTTP GET from every function: each server sees its tenant's ENI address, 10.0.1.4")
        for fn, ns in envs.items():
            body = lab.exec(ns, [PY, "-m", "eniplane.labserve", "http", VPC_SERVER, "80"])
            print(f"    {fn:14} -> {body.strip()}")
        step("UDP echo from acme-api")
        print("    " + lab.exec(envs["acme-api"], [PY, "-m", "eniplane.labserve", "udp",
                                                 VPC_SERVER, "7", "hello"]).strip())
        step("acme's groups allow tcp/80 only: tcp/22 is refused when the flow is created")
        out = lab.exec(envs["acme-api"], [PY, "-m", "eniplane.labserve", "http", VPC_SERVER,
                                          "22", "--timeout", "1"], check=False)
        print("    " + (out.strip() or "no answer: dropped and counted as drop_sg_denied"))
        step("ping from globex-report")
        print("    " + lab.exec(envs["globex-report"], ["ping", "-c", "2", "-i", "0.2", "-W",
                                                      "1", VPC_SERVER]).strip().splitlines()[-2])
        step("eniplane flows: each flow with its environment, its ENI port and the remote")
        eniplane(node, "flows")
        step("eniplane stats -z: every verdict and drop reason that moved, by name")
        eniplane(node, "stats", "-z")
        ok = True
    except (EniplaneError, subprocess.CalledProcessError) as e:
        print(f"\ndemo failed: {e}", file=sys.stderr)
    finally:
        if keep and ok:
            print(f"\nKEEP=1: lab {lab.prefix} and node {node} are still up. Explore with\n"
                  f"  export ENIPLANE_NODE={node} "
                  f"ENIPLANE_STATE_DIR={os.environ['ENIPLANE_STATE_DIR']}\n"
                  f"  .venv/bin/eniplane status; .venv/bin/eniplane eni list\n"
                  f"  ip netns exec {lab.prefix}-env-acme-api ping {VPC_SERVER}\n"
                  f"Tear down with\n  .venv/bin/eniplane down --node {node} && "
                  f".venv/bin/eniplane lab down {lab.prefix} && "
                  f"rm -rf {os.environ['ENIPLANE_STATE_DIR']}")
        else:
            if up:
                subprocess.run([PY, "-m", "eniplane", "down", "--node", node],
                               capture_output=True)
            lab.destroy()
            shutil.rmtree(os.environ["ENIPLANE_STATE_DIR"], ignore_errors=True)
    if ok:
        print(f"\nsummary: one node, two tenants on the same 10.0.0.0/16, three functions on two "
              f"shared ENIs; HTTP, UDP and ping worked, tcp/22 was refused and counted "
              f"({time.monotonic() - t0:.1f}s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
