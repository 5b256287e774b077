"""Datapath tier: packets built with scapy, run through the pinned programs with
BPF_PROG_TEST_RUN, compared byte for byte and counter by counter."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator
from dataclasses import dataclass, field

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from eniplane import bpfsys, netlink, paths
from eniplane.datapath import Datapath
from eniplane.sgcompile import Rule

XDP = {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}
FABRIC_IP = "100.64.0.1"
WORKER = "100.64.0.11"
WORKER_MAC = "02:00:00:00:00:11"
FABRIC_MAC_SEEN = "02:00:00:00:00:01"  # what workers address frames to
GW_A, GW_B = "02:0a:0a:0a:0a:01", "02:0b:0b:0b:0b:01"
ENV_MAC = "02:ee:00:00:00:02"
ENV_IP = "172.16.0.2"
VNI_A, VNI_B, VNI_TINY = 100, 200, 300
ENI_A = "10.0.1.4"
ENI_B = "10.0.1.4"  # the same address in the other VPC, on purpose
ENI_TINY = "10.0.2.4"
SERVER = "10.0.0.10"
GATEWAY_MAC = "02:e1:1a:00:00:01"


@dataclass
class Env:
    dp: Datapath
    netns: str
    fabric: int
    vpc_if: dict[str, dict] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)

    def run(self, prog: str, pkt: bytes, ifname: str | None = None) -> tuple[str, bytes, dict]:
        before = self.dp.stats()
        ifindex = self.vpc_if[ifname]["ifindex"] if ifname else 0
        with netlink.in_netns(self.netns):
            rv, out, _ = bpfsys.prog_test_run(self.fds[prog], bytes(pkt), ingress_ifindex=ifindex)
        after = self.dp.stats()
        delta = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        return XDP.get(rv, str(rv)), out, delta


def tunnel(inner, vni=VNI_A, worker=WORKER, dport=4789):
    return (Ether(src=WORKER_MAC, dst=FABRIC_MAC_SEEN) / IP(src=worker, dst=FABRIC_IP) /
            UDP(sport=40000, dport=dport) / VXLAN(vni=vni, flags=0x08) / inner)


def env_frame(l4, src=ENV_IP, dst=SERVER, **ip):
    return Ether(src=ENV_MAC, dst=GATEWAY_MAC) / IP(src=src, dst=dst, **ip) / l4


# The memory orders a datapath is built for (bpf/order.h): this CPU's own (on x86-64 no fence at
# all), and a fence at every ordering point, as arm64 gets it. The tests of what hands entries
# and slots from one flow to another run against both builds.
ORDERS = {"native": {}, "fenced": {"ENIPLANE_WEAK_ORDER": 1}}


@pytest.fixture(scope="session")
def env(lab, dp_node):
    e = make_env(lab, dp_node)
    yield e
    close_env(e)


@contextmanager
def node_env(lab, suffix: str, defines: dict[str, int]) -> Iterator[Env]:
    """A node of its own, built with `defines`, configured as `env` is, removed afterwards."""
    import shutil

    from eniplane import loader

    name = f"{lab.prefix}-{suffix}"
    for fd in loader.compile_and_pin(name, defines).values():
        os.close(fd)
    e = make_env(lab, name)
    try:
        yield e
    finally:
        close_env(e)
        shutil.rmtree(paths.pin_dir(name), ignore_errors=True)


@pytest.fixture(scope="module")
def small_env(lab):
    """A second node whose flow tables hold only 64 entries per direction: map pressure."""
    with node_env(lab, "small", {"MAX_FLOWS": 64}) as e:
        yield e


def make_env(lab, node_name: str) -> Env:
    dp = Datapath(node_name, lab.node_ns)
    fab = netlink.link_get(lab.node_ns, lab.fabric_if)
    dp.set_config(FABRIC_IP, fab["ifindex"], fab["mac"], GATEWAY_MAC, fab["mtu"])
    e = Env(dp, lab.node_ns, fab["ifindex"])
    for slot, (v, idx, gw) in enumerate([("a", 1, GW_A), ("b", 2, GW_B)], start=1):
        info = netlink.link_get(lab.node_ns, lab.vpc_if(v))
        e.vpc_if[lab.vpc_if(v)] = info
        dp.set_vpc(info["ifindex"], idx, "10.0.0.1", info["mac"], slot, gateway_mac=gw,
                   mtu=info["mtu"])
    dp.add_worker(WORKER)
    dp.set_eni(VNI_A, 1, 1, ENI_A)
    dp.set_eni(VNI_B, 2, 2, ENI_B)
    dp.set_eni(VNI_TINY, 3, 1, ENI_TINY, port_lo=2000, port_hi=2001)
    dp.sync_placements({(WORKER, v): 1 for v in (VNI_A, VNI_B, VNI_TINY)})
    # VNI_A: two groups whose union is the policy: tcp 80 and 443-445 to the VPC, udp 7 to
    # the server only, icmp anywhere. VNI_B: everything. VNI_TINY: all to the VPC.
    dp.set_sg_rules(VNI_A, [Rule.of("tcp", "10.0.0.0/16", (80, 80)),
                            Rule.of("udp", f"{SERVER}/32", (7, 7)),
                            Rule.of("tcp", "10.0.0.0/16", (443, 445)),
                            Rule.of("icmp", "0.0.0.0/0")])
    dp.set_sg_rules(VNI_B, [Rule.of("all", "0.0.0.0/0")])
    dp.set_sg_rules(VNI_TINY, [Rule.of("all", "10.0.0.0/16")])
    for prog in ("xdp_fabric", "xdp_vpc"):
        e.fds[prog] = bpfsys.obj_get(str(paths.progs_dir(node_name) / prog))
    return e


def close_env(e: Env) -> None:
    for fd in e.fds.values():
        os.close(fd)
    e.dp.close()
