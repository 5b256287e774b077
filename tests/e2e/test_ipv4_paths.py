"""The rest of IPv4 end to end (issue 14, the parts built so far), with the kernel's own VXLAN
device as the environment's peer and real sockets: an ICMP port unreachable from a VPC host
reaches the environment's UDP socket as "connection refused", and a TCP download through a VPC
link narrower than the environment's completes because SYN/ACKs are MSS-clamped. The module has
a lab and a node of its own (it narrows a VPC link)."""

from __future__ import annotations

import json
import sys

import pytest

from clitools import configured_node
from eniplane.datapath import Datapath
from eniplane.lab import VPC_CIDR, VPC_GATEWAY, VPC_SERVER, WORKER_IPS, Lab

PY = sys.executable
ENV = "172.16.0.2"
CLOSED_UDP = 9999  # nothing listens there
BULK_PORT = 8080
NARROW = 1400  # the VPC link's MTU in the download test

# A UDP socket that sends once and reports what the kernel said (connect() so that ICMP errors
# reach it: an unconnected UDP socket never sees them).
UDP_PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2]))); s.send(b"anyone?")
try:
    s.recv(100); print("answer")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"""
# Serves N bytes to whoever connects, then closes.
BULK_SERVER = """
import socket, sys
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2]))); ls.listen(4)
blob = b"x" * 65536
while True:
    c, _ = ls.accept()
    left = int(sys.argv[3])
    while left > 0:
        left -= c.send(blob[:min(left, len(blob))])
    c.close()
"""
BULK_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
n = 0
while True:
    d = s.recv(65536)
    if not d:
        break
    n += len(d)
print(n, s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))
"""


def configuration() -> dict:
    rules = [{"proto": "udp", "ports": str(CLOSED_UDP), "cidr": VPC_CIDR},
             {"proto": "tcp", "ports": str(BULK_PORT), "cidr": VPC_CIDR}]
    return {
        "vpcs": [{"id": "vpc-a", "cidr": VPC_CIDR, "iface": "vpca", "gateway": VPC_GATEWAY}],
        "subnets": [{"id": "sub-a", "vpc": "vpc-a", "cidr": "10.0.1.0/24"}],
        "security_groups": [{"id": "sg-a", "vpc": "vpc-a", "ingress": [], "egress": rules}],
        "workers": [WORKER_IPS["w1"]],
        "functions": [{"name": "fn-a", "subnets": ["sub-a"], "security_groups": ["sg-a"],
                       "workers": [WORKER_IPS["w1"]]}],
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ipv4")
    with Lab.create() as lab:
        node = f"{lab.prefix}-ipv4"
        with configured_node(lab, node, configuration(), tmp) as cli:
            (eni,) = json.loads(cli("eni", "list", "-o", "json").stdout)
            lab.add_env("a", "w1", eni["vni"], ENV)
            yield {"lab": lab, "node": node, "cli": cli, "env": lab.envs["a"]["ns"]}


def stats(world) -> dict[str, int]:
    with Datapath(world["node"], world["lab"].node_ns) as dp:
        return dp.stats()


def test_a_closed_udp_port_in_the_vpc_is_refused_at_the_environment(world):
    lab = world["lab"]
    before = stats(world)["rev_icmp_error"]
    out = lab.exec(world["env"], [PY, "-c", UDP_PROBE, VPC_SERVER, str(CLOSED_UDP)])
    assert out.strip() == "refused", out
    assert stats(world)["rev_icmp_error"] > before


def test_a_download_through_a_narrower_vpc_link_completes(world):
    """The node's side of the VPC link narrows to 1,400 bytes (the server's side stays at
    1,500, as a smaller link further on would be): a frame larger than that is lost on it. The
    server's segments fit only because the environment's SYN reached it with a clamped MSS."""
    lab, cli = world["lab"], world["cli"]
    size = 10 * 1024 * 1024
    lab.start(lab.vpc_ns("a"), [PY, "-c", BULK_SERVER, VPC_SERVER, str(BULK_PORT), str(size)])
    lab.exec(lab.node_ns, ["ip", "link", "set", "dev", "vpca", "mtu", str(NARROW)])
    cli("sync")  # reads the interface's MTU again
    status = json.loads(cli("status", "-o", "json").stdout)
    (vpca,) = [i for i in status["interfaces"] if i["ifname"] == "vpca"]
    assert (vpca["mtu"], vpca["mss_clamp"]) == (NARROW, NARROW - 40)
    import time
    deadline = time.monotonic() + 10
    while True:  # the server may still be starting
        p = lab.run(world["env"], [PY, "-c", BULK_CLIENT, VPC_SERVER, str(BULK_PORT)],
                    timeout=60)
        if p.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert p.returncode == 0, p.stderr
    got, mss = map(int, p.stdout.split())
    assert got == size
    assert mss <= NARROW - 40  # what the server announced, clamped on its SYN/ACK
