"""Hostile hosts, end to end: a machine on the fabric that claims worker w1's address (from its
own MAC, then from w1's MAC too) and a host inside a VPC that claims the VPC's gateway get no
packet across the node, and the tenants they aim at keep working. Then a placement is revoked
and restored. Everything runs in a lab and on a node of this module's own: the frames it forges
must not teach the shared `node` fixture anything.

Acme (vpc-acme behind vpca) runs on w1 only and Globex (vpc-globex behind vpcb) on w2 only; both
VPCs use 10.0.0.0/16. A UDP listener on port 9999 in each VPC logs every datagram it gets, so
"nothing crossed" is read where it would have landed, next to the node's counters."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clitools import configured_node, node_cli
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from eniplane import netlink
from eniplane.lab import FABRIC_IP, VPC_CIDR, VPC_GATEWAY, VPC_SERVER, WORKER_IPS, Lab

PY = sys.executable
W1, W2 = WORKER_IPS["w1"], WORKER_IPS["w2"]
PROBE_PORT = 9999
EVIL_ENV = "172.16.0.66"  # the inner source the forged frames claim
EVIL_MAC = "02:ee:00:00:00:66"  # the VPC host's second MAC

# Logs "peer payload" per datagram and echoes it, so a client's exchange completes only if the
# datagram got here and back.
LISTENER = """
import socket, sys
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((sys.argv[1], int(sys.argv[2])))
with open(sys.argv[3], "a") as log:
    while True:
        data, peer = u.recvfrom(65535)
        log.write(f"{peer[0]} {data.decode(errors='replace')}\\n"); log.flush()
        u.sendto(data, peer)
"""

# Sends raw frames (hex, one a line on stdin) out of eth0, then counts for a moment the frames
# that come back addressed to this host's MAC: a tunnel ARP answered or a flow opened for a
# forger would show up here.
SENDER = """
import socket, sys, time
me, linger = bytes.fromhex(sys.argv[1].replace(":", "")), float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0))
for line in sys.stdin:
    s.send(bytes.fromhex(line.strip()))
s.settimeout(0.05)
got, deadline = 0, time.monotonic() + linger
while time.monotonic() < deadline:
    try:
        frame, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    if addr[2] != socket.PACKET_OUTGOING and frame[:6] == me:
        got += 1
print(got)
"""


def configuration() -> dict:
    return {
        "vpcs": [{"id": "vpc-acme", "cidr": VPC_CIDR, "iface": "vpca", "gateway": VPC_GATEWAY},
                 {"id": "vpc-globex", "cidr": VPC_CIDR, "iface": "vpcb",
                  "gateway": VPC_GATEWAY}],
        "subnets": [{"id": "sub-acme", "vpc": "vpc-acme", "cidr": "10.0.1.0/24"},
                    {"id": "sub-globex", "vpc": "vpc-globex", "cidr": "10.0.1.0/24"}],
        # Both groups let the forged datagrams through: only placement and MAC pinning may stop
        # them.
        "security_groups": [
            {"id": "sg-acme", "vpc": "vpc-acme", "ingress": [],
             "egress": [{"proto": "tcp", "ports": "80", "cidr": VPC_CIDR},
                        {"proto": "udp", "ports": str(PROBE_PORT), "cidr": VPC_CIDR}]},
            {"id": "sg-globex", "vpc": "vpc-globex", "ingress": [],
             "egress": [{"proto": "all", "cidr": VPC_CIDR}]}],
        "workers": [W1, W2],
        "functions": [
            {"name": "acme-api", "subnets": ["sub-acme"], "security_groups": ["sg-acme"],
             "workers": [W1]},
            {"name": "globex-report", "subnets": ["sub-globex"],
             "security_groups": ["sg-globex"], "workers": [W2]}],
    }


class World:
    def __init__(self, lab: Lab, node: str, tmp: Path) -> None:
        self.lab, self.node, self.tmp = lab, node, tmp

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return node_cli(self.node, timeout=60)(*args, check=check)

    def json(self, *args: str):
        return json.loads(self.cli(*args, "-o", "json").stdout)

    def counters(self) -> dict[str, int]:
        return self.json("stats")["counters"]

    def heard(self, vpc: str) -> list[str]:
        """What the VPC's listener has received, one 'peer payload' a line."""
        log = self.tmp / f"heard-{vpc}"
        return log.read_text().splitlines() if log.exists() else []

    def udp(self, env: str, msg: str, timeout: float = 2.0) -> subprocess.CompletedProcess:
        return self.lab.run(self.lab.envs[env]["ns"],
                            [PY, "-m", "eniplane.labserve", "udp", VPC_SERVER, str(PROBE_PORT),
                             msg, "--timeout", str(timeout)])

    def http(self, env: str, timeout: float = 3.0) -> subprocess.CompletedProcess:
        return self.lab.run(self.lab.envs[env]["ns"],
                            [PY, "-m", "eniplane.labserve", "http", VPC_SERVER, "80",
                             "--timeout", str(timeout)])

    def send(self, ns: str, me: str, frames: list, linger: float = 0.5) -> int:
        """Send forged frames from `ns`; how many frames came back addressed to `me`."""
        p = subprocess.run(["ip", "netns", "exec", ns, PY, "-c", SENDER, me, str(linger)],
                           input="".join(bytes(f).hex() + "\n" for f in frames),
                           capture_output=True, text=True, timeout=10)
        assert p.returncode == 0, p.stderr
        return int(p.stdout)


def _wait_udp_bound(lab: Lab, ns: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while f":{port:04X} " not in lab.exec(ns, ["cat", "/proc/net/udp"]):
        assert time.monotonic() < deadline, f"listener in {ns} did not bind"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    with Lab.create() as lab:
        w = World(lab, f"{lab.prefix}-hostile", tmp)
        with configured_node(lab, w.node, configuration(), tmp):
            vni = {e["functions"][0]: e["vni"] for e in w.json("eni", "list")}
            w.vni = {"acme": vni["acme-api"], "globex": vni["globex-report"]}
            w.eni_addr = {e["functions"][0]: e["address"] for e in w.json("eni", "list")}
            lab.add_env("acme", "w1", w.vni["acme"], "172.16.0.2")
            lab.add_env("globex", "w2", w.vni["globex"], "172.16.0.2")
            for v in ("a", "b"):
                lab.start(lab.vpc_ns(v), [PY, "-c", LISTENER, VPC_SERVER, str(PROBE_PORT),
                                          str(tmp / f"heard-{v}")])
                _wait_udp_bound(lab, lab.vpc_ns(v), PROBE_PORT)
            w.mac = {
                "w1": netlink.link_get(lab.worker_ns("w1"), "eth0")["mac"],
                "fab0": netlink.link_get(lab.node_ns, lab.fabric_if)["mac"],
                "gw-a": netlink.link_get(lab.vpc_ns("a"), "eth0")["mac"],
                "node-vpca": netlink.link_get(lab.node_ns, lab.vpc_if("a"))["mac"],
            }
            yield w


def test_each_tenant_works_from_the_worker_it_is_placed_on(world):
    w = world
    p = w.http("acme")
    assert p.returncode == 0 and p.stdout.startswith(f"vpc-a saw {w.eni_addr['acme-api']}:"), \
        p.stderr
    for env, vpc, fn in (("acme", "a", "acme-api"), ("globex", "b", "globex-report")):
        p = w.udp(env, f"legit-{env}")
        assert p.returncode == 0 and p.stdout.strip() == f"legit-{env}", p.stderr
        assert w.heard(vpc) == [f"{w.eni_addr[fn]} legit-{env}"]  # the listeners do hear
    # w1's MAC is now learned from w1 itself: the forger below comes second
    w1 = next(r for r in w.json("worker", "list") if r["ip"] == W1)
    assert (w1["mac"], w1["mac_source"]) == (w.mac["w1"], "learned")


def _tunnel(src_mac: str, dst_mac: str, vni: int, inner):
    return (Ether(src=src_mac, dst=dst_mac) / IP(src=W1, dst=FABRIC_IP)
            / UDP(sport=45678, dport=4789) / VXLAN(vni=vni, flags=0x08) / inner)


def _datagram(tag: str):
    return (Ether(src="02:00:00:00:66:01", dst="02:00:00:00:00:01")
            / IP(src=EVIL_ENV, dst=VPC_SERVER) / UDP(sport=40066, dport=PROBE_PORT) / tag.encode())


def _tunnel_arp():
    return (Ether(src="02:00:00:00:66:01", dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc="02:00:00:00:66:01", psrc=EVIL_ENV, pdst=VPC_GATEWAY))


def test_a_host_claiming_w1s_address_gets_nothing_across(world):
    w, lab = world, world.lab
    host = lab.add_fabric_host("evil")
    evil = netlink.link_get(host, "eth0")["mac"]
    fab0, acme, globex = w.mac["fab0"], w.vni["acme"], w.vni["globex"]
    before = w.counters()

    # (a, b) w1's address from the forger's own MAC, on both tenants' VNIs: data and tunnel ARP
    own_mac = [_tunnel(evil, fab0, globex, _datagram("hostile-own-mac-globex")),
               _tunnel(evil, fab0, acme, _datagram("hostile-own-mac-acme")),
               _tunnel(evil, fab0, acme, _tunnel_arp()),
               _tunnel(evil, fab0, globex, _tunnel_arp())]
    # (c) w1's address and w1's MAC, on the VNI of a tenant w1 does not run
    w1_mac = [_tunnel(w.mac["w1"], fab0, globex, _datagram("hostile-w1-mac-globex")),
              _tunnel(w.mac["w1"], fab0, globex, _tunnel_arp())]
    assert w.send(host, evil, own_mac + w1_mac) == 0  # no ARP answer, no reply of any kind

    # nothing landed in either VPC, and no flow stands for the forger
    assert not [h for h in w.heard("a") + w.heard("b") if "hostile" in h]
    flows = w.json("flows")
    assert not [f for f in flows if f["vni"] == globex and f["worker"] == W1]
    assert not [f for f in flows if f["env"].startswith(f"{EVIL_ENV}:")]
    # each frame was dropped for the reason it deserved
    after = w.counters()
    assert after["worker_mac_conflict"] - before["worker_mac_conflict"] == len(own_mac)
    assert after["drop_worker_not_placed"] - before["drop_worker_not_placed"] == len(w1_mac)
    assert after["worker_mac_learned"] == before["worker_mac_learned"]
    # w1 is still known by its own MAC, and its environment still gets its replies
    w1 = next(r for r in w.json("worker", "list") if r["ip"] == W1)
    assert (w1["mac"], w1["mac_source"]) == (w.mac["w1"], "learned")
    p = w.udp("acme", "after-the-forger")
    assert p.returncode == 0 and p.stdout.strip() == "after-the-forger", p.stderr
    p = w.http("acme")
    assert p.returncode == 0 and p.stdout.startswith("vpc-a saw "), p.stderr


def test_a_vpc_host_claiming_the_gateway_is_not_adopted(world):
    w, lab = world, world.lab
    node_if, gw_mac = w.mac["node-vpca"], w.mac["gw-a"]
    acme_vpc = next(v for v in w.json("vpc", "list") if v["id"] == "vpc-acme")
    assert (acme_vpc["gateway_mac"], acme_vpc["gateway_mac_source"]) == (gw_mac, "learned")
    before = w.counters()
    bcast = "ff:ff:ff:ff:ff:ff"
    claims = [  # a reply to the node, a gratuitous request and a gratuitous reply, all for 10.0.0.1
        Ether(src=EVIL_MAC, dst=node_if) / ARP(op=2, hwsrc=EVIL_MAC, psrc=VPC_GATEWAY,
                                              hwdst=node_if, pdst=w.eni_addr["acme-api"]),
        Ether(src=EVIL_MAC, dst=bcast) / ARP(op=1, hwsrc=EVIL_MAC, psrc=VPC_GATEWAY,
                                             pdst=VPC_GATEWAY),
        Ether(src=EVIL_MAC, dst=bcast) / ARP(op=2, hwsrc=EVIL_MAC, psrc=VPC_GATEWAY,
                                             hwdst=bcast, pdst=VPC_GATEWAY)]
    assert w.send(lab.vpc_ns("a"), EVIL_MAC, claims, linger=0.2) == 0
    after = w.counters()
    assert after["gw_mac_conflict"] - before["gw_mac_conflict"] == len(claims)
    assert after["gw_mac_learned"] == before["gw_mac_learned"]
    acme_vpc = next(v for v in w.json("vpc", "list") if v["id"] == "vpc-acme")
    assert (acme_vpc["gateway_mac"], acme_vpc["gateway_mac_source"]) == (gw_mac, "learned")
    # forward packets still go to the real gateway: new connections reach the real server, and
    # nothing addressed to the claimed MAC came out of the node
    heard = len(w.heard("a"))
    p = w.http("acme")
    assert p.returncode == 0 and p.stdout.startswith("vpc-a saw "), p.stderr
    p = w.udp("acme", "after-the-claim")
    assert p.returncode == 0 and p.stdout.strip() == "after-the-claim", p.stderr
    assert len(w.heard("a")) == heard + 1


def test_unplacing_stops_new_connections_and_placing_restores_them(world):
    w = world
    before = w.counters()["drop_worker_not_placed"]
    w.cli("function", "unplace", "acme-api", "--worker", W1)
    assert not [f for f in w.json("flows") if f["vni"] == w.vni["acme"]]  # flushed at once
    p = w.http("acme", timeout=1)
    assert p.returncode == 1 and "timed out" in p.stderr, (p.returncode, p.stderr)
    assert w.counters()["drop_worker_not_placed"] > before
    w.cli("function", "place", "acme-api", "--worker", W1)
    p = w.http("acme")
    assert p.returncode == 0 and p.stdout.startswith("vpc-a saw "), p.stderr
