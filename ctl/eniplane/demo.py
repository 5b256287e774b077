"""`make demo`: the main job end to end in a throw-away lab.

Contract: builds the lab, brings a node up, attaches two tenants whose VPCs both use 10.0.0.0/16,
and shows real traffic from environments behind the kernel's VXLAN device: HTTP and UDP that work,
a port the security groups refuse, a ping, and the counters. Every step prints one line; any
failure stops the demo with a message and still cleans up, unless KEEP=1 leaves it running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from .errors import EniplaneError

PY = sys.executable


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def show(*args: str) -> None:
    subprocess.run([PY, "-m", "eniplane", *args], check=True)


def main() -> int:
    from . import node as nodemod
    from .datapath import Datapath
    from .lab import VPC_SERVER, Lab
    from .sgcompile import Rule

    keep = os.environ.get("KEEP") == "1"
    t0 = time.monotonic()
    step("building the lab: a node, a fabric, two workers, two VPCs that both use 10.0.0.0/16")
    lab = Lab.create()
    node = f"{lab.prefix}-demo"
    ok = False
    try:
        step(f"eniplane up: compiling and attaching the datapath in {lab.node_ns}")
        show("up", "--netns", lab.node_ns, "--fabric-if", lab.fabric_if, "--fabric-ip",
             lab.fabric_ip, "--node", node)
        step("attaching VPC A and VPC B (gateway MACs learned by ARP), two workers, two ENIs")
        a = nodemod.attach_vpc(node, "vpca", 1, "10.0.0.1")
        b = nodemod.attach_vpc(node, "vpcb", 2, "10.0.0.1")
        with Datapath(node, lab.node_ns) as dp:
            for w in ("100.64.0.11", "100.64.0.12"):
                dp.add_worker(w)
            dp.set_eni(1001, 1, 1, a["ifindex"], "10.0.1.4")
            dp.set_eni(1002, 2, 2, b["ifindex"], "10.0.1.4")
            web = [Rule.of("tcp", "10.0.0.0/16", (80, 80)), Rule.of("udp", "10.0.0.0/16", (7, 7)),
                   Rule.of("icmp", "10.0.0.0/16")]
            dp.set_sg_rules(1001, web)
            dp.set_sg_rules(1002, web)
        env_a = lab.add_env("tenant-a", "w1", 1001, "172.16.0.2")
        env_b = lab.add_env("tenant-b", "w2", 1002, "172.16.0.2")
        print("    tenant A: VNI 1001 -> ENI 10.0.1.4 in VPC A; tenant B: VNI 1002 -> ENI 10.0.1.4 "
              "in VPC B (same addresses on purpose)")

        step("HTTP GET from each tenant's environment: each server sees only its own ENI")
        for name, ns in (("A", env_a), ("B", env_b)):
            print(f"    tenant {name}: " + lab.exec(ns, [PY, "-m", "eniplane.labserve", "http",
                                                       VPC_SERVER, "80"]).strip())
        step("UDP echo from tenant A")
        print("    " + lab.exec(env_a, [PY, "-m", "eniplane.labserve", "udp", VPC_SERVER, "7",
                                     "hello"]).strip())
        step("tcp/22 is not in the security groups: refused at flow creation")
        out = lab.exec(env_a, [PY, "-m", "eniplane.labserve", "http", VPC_SERVER, "22",
                               "--timeout", "1"], check=False)
        print("    " + (out.strip() or "no answer (dropped, counted as drop_sg_denied)"))
        step("ping from tenant B")
        print("    " + lab.exec(env_b, ["ping", "-c", "2", "-i", "0.2", "-W", "1",
                                     VPC_SERVER]).strip().splitlines()[-2])
        step("eniplane maps dump flows_fwd: one entry per flow, decoded from BTF")
        show("maps", "dump", "flows_fwd", "--node", node, "--limit", "5")
        step("eniplane stats -z: every verdict and drop reason by name")
        show("stats", "--node", node, "-z")
        ok = True
    except (EniplaneError, subprocess.CalledProcessError) as e:
        print(f"\ndemo failed: {e}", file=sys.stderr)
    finally:
        if keep and ok:
            print(f"\nKEEP=1: lab {lab.prefix} and node {node} are still up. Explore with\n"
                  f"  .venv/bin/eniplane status --node {node}\n"
                  f"  ip netns exec {lab.prefix}-env-tenant-a ping {VPC_SERVER}\n"
                  f"Tear down with\n  .venv/bin/eniplane down --node {node} && "
                  f".venv/bin/eniplane lab down {lab.prefix}")
        else:
            if nodemod.is_up(node):
                nodemod.down(node)
            lab.destroy()
    if ok:
        print(f"\nsummary: two tenants on one node, same VPC CIDR, isolated; HTTP, UDP and ping "
              f"worked, tcp/22 was refused ({time.monotonic() - t0:.1f}s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
