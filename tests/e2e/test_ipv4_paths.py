"""The rest of IPv4 end to end (issue 14), with the kernel's own VXLAN device as the
environment's peer and real tools and sockets: an ICMP port unreachable from a VPC host reaches
the environment's UDP socket as "connection refused"; a TCP download through a VPC link narrower
than the environment's completes because SYN/ACKs are MSS-clamped; `ping -M do` across that link
learns its MTU from the node; `traceroute` shows the node as a hop; a 4,000-byte UDP datagram,
fragmented by its sender, arrives whole at a VPC server and its fragmented echo arrives whole at
the environment. The module has a lab and a node of its own (it narrows a VPC link)."""

from __future__ import annotations

import json
import re
import sys

import pytest

from clitools import lab_with_function, one_tenant
from eniplane.datapath import Datapath
from eniplane import ipv4
from eniplane.lab import FABRIC_MTU, UDP_ECHO_PORT, VPC_CIDR, VPC_MTU, VPC_SERVER

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


# Sends one datagram of N bytes (the kernel fragments it) and waits for the echo.
UDP_BIG = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2])))
data = bytes(range(250)) * (int(sys.argv[3]) // 250)
s.send(data)
try:
    got = s.recv(65535); print(len(data), got.endswith(b" " + data))  # "NAME saw A:P " + data
except socket.timeout:
    print("timeout")
"""
# Asks until an answer comes (at most 5 times, 1 s apart): prints the tries and the answer's check.
UDP_RETRY = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
s.connect((sys.argv[1], int(sys.argv[2])))
data = bytes(range(250)) * (int(sys.argv[3]) // 250) + b"z" * (int(sys.argv[3]) % 250)
for i in range(1, 6):
    s.send(data)
    try:
        got = s.recv(65535); print(i, got.endswith(b" " + data)); break
    except socket.timeout:
        pass
else:
    print("timeout")
"""
TRACE_PORTS = "33434-33534"  # traceroute's UDP probes


def configuration() -> dict:
    rules = [{"proto": "udp", "ports": str(CLOSED_UDP), "cidr": VPC_CIDR},
             {"proto": "tcp", "ports": str(BULK_PORT), "cidr": VPC_CIDR},
             {"proto": "udp", "ports": str(UDP_ECHO_PORT), "cidr": VPC_CIDR},
             {"proto": "udp", "ports": TRACE_PORTS, "cidr": VPC_CIDR},
             {"proto": "icmp", "cidr": VPC_CIDR}]
    return one_tenant(rules)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with lab_with_function(tmp_path_factory.mktemp("ipv4"), "ipv4", configuration(),
                           ENV) as w:
        yield w


def stats(world) -> dict[str, int]:
    with Datapath(world["node"], world["lab"].node_ns) as dp:
        return dp.stats()


def test_a_closed_udp_port_in_the_vpc_is_refused_at_the_environment(world):
    lab = world["lab"]
    before = stats(world)["rev_icmp_error"]
    out = lab.exec(world["env"], [PY, "-c", UDP_PROBE, VPC_SERVER, str(CLOSED_UDP)])
    assert out.strip() == "refused", out
    assert stats(world)["rev_icmp_error"] > before


@pytest.fixture
def narrow(world):
    """The node's side of the VPC link narrowed to 1,400 bytes (the server's side stays at
    1,500, as a smaller link further on would be): a frame larger than that is lost on it.
    `sync` reads the interface's MTU again; it is put back afterwards."""
    lab, cli = world["lab"], world["cli"]
    lab.exec(lab.node_ns, ["ip", "link", "set", "dev", "vpca", "mtu", str(NARROW)])
    cli("sync")
    yield
    lab.exec(lab.node_ns, ["ip", "link", "set", "dev", "vpca", "mtu", str(VPC_MTU)])
    cli("sync")


def test_a_download_through_a_narrower_vpc_link_completes(world, narrow):
    """The server's segments fit the narrow link only because the environment's SYN reached it
    with a clamped MSS."""
    lab, cli = world["lab"], world["cli"]
    size = 10 * 1024 * 1024
    lab.start(lab.vpc_ns("a"), [PY, "-c", BULK_SERVER, VPC_SERVER, str(BULK_PORT), str(size)])
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


def test_ping_with_df_across_the_narrower_link_learns_its_mtu(world, narrow):
    """1,472 bytes of data make a 1,500-byte packet, which fits the environment's link but not
    the node's into the VPC: the node answers with fragmentation needed, MTU 1,400, which ping
    reports (and the environment's kernel then keeps as the path's MTU)."""
    lab = world["lab"]
    before = stats(world)["tx_icmp_frag_needed"]
    p = lab.run(world["env"], ["ping", "-n", "-M", "do", "-s", "1472", "-c", "2", "-i", "0.3",
                               "-W", "2", VPC_SERVER], timeout=20)
    out = p.stdout + p.stderr
    assert "Frag needed" in out and re.search(r"mtu ?= ?1400", out), out
    assert stats(world)["tx_icmp_frag_needed"] > before
    # 1,372 bytes of data fit: the same ping gets its answers
    p = lab.run(world["env"], ["ping", "-n", "-M", "do", "-s", "1372", "-c", "1", "-W", "2",
                               VPC_SERVER], timeout=20)
    assert p.returncode == 0, p.stdout + p.stderr


def test_traceroute_from_an_environment_shows_the_node(world):
    lab = world["lab"]
    p = lab.run(world["env"], ["traceroute", "-n", "-q", "1", "-w", "2", "-m", "4", VPC_SERVER],
                timeout=30)
    assert p.returncode == 0, p.stderr
    hops = [line.split() for line in p.stdout.splitlines()[1:]]
    assert hops[0][:2] == ["1", ipv4.DEFAULT_TUNNEL_GATEWAY], p.stdout
    assert hops[1][:2] == ["2", VPC_SERVER], p.stdout  # the server's port unreachable ends it
    assert len(hops) == 2, p.stdout
    assert stats(world)["tx_icmp_time_exceeded"] >= 1


def test_a_fragmented_datagram_arrives_whole_both_ways(world):
    """4,000 bytes: the environment's kernel fragments the datagram on its 1,500-byte link, the
    echo server's kernel fragments the answer; each side's socket gets it whole."""
    lab = world["lab"]
    before = stats(world)
    out = lab.exec(world["env"], [PY, "-c", UDP_BIG, VPC_SERVER, str(UDP_ECHO_PORT), "4000"],
                   timeout=15)
    assert out.split() == ["4000", "True"], out
    after = stats(world)
    assert after["fwd_fragment"] - before["fwd_fragment"] >= 2
    assert after["rev_fragment"] - before["rev_fragment"] >= 2


def test_an_answer_too_big_for_the_tunnel_teaches_the_server_what_fits(world):
    """The node's fabric link narrowed to 1,400 bytes (and `sync` reads it again): an echo of
    1,340 bytes of request fits into the tunnel, but the server's answer, 26 bytes longer, does
    not. The server sends it with DF (Linux's path MTU discovery for UDP), gets fragmentation
    needed from the ENI address with MTU 1,350, and answers the next try in fragments, which
    reach the environment whole."""
    lab, cli = world["lab"], world["cli"]
    node_if = lab.fabric_if
    before = stats(world)
    lab.exec(lab.node_ns, ["ip", "link", "set", "dev", node_if, "mtu", "1400"])
    try:
        cli("sync")
        with Datapath(world["node"], lab.node_ns) as dp:
            assert dp.fabric_mtu() == 1400
        out = lab.exec(world["env"], [PY, "-c", UDP_RETRY, VPC_SERVER, str(UDP_ECHO_PORT),
                                      "1312"], timeout=15)
    finally:
        lab.exec(lab.node_ns, ["ip", "link", "set", "dev", node_if, "mtu", str(FABRIC_MTU)])
        cli("sync")
    tries, ok = out.split()
    assert ok == "True" and int(tries) >= 2, out
    after = stats(world)
    assert after["tx_icmp_frag_needed"] > before["tx_icmp_frag_needed"]
    assert after["rev_fragment"] > before["rev_fragment"]
