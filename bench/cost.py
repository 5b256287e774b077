"""Per-packet cost inside the kernel, through BPF_PROG_TEST_RUN, and flow scale.

Contract: every figure is the median of the kernel-reported duration of many single-packet runs
(repeat=1: a repeated run does not reset the frame, and eniplane decapsulates, so a repetition
would measure a different packet). The floor is an empty XDP program measured the same way;
ratios are to it. The new-flow path opens a distinct flow on every run. `scale()` fills the flow
tables to a given size, measures the established path at that size and reports the memory per
flow that the kernel accounts for the flow map (one entry per flow, both directions) and its
share of flow_hot.
"""

from __future__ import annotations

import ipaddress
import os
import random
import statistics
import struct
import time

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from eniplane import bpfsys, netlink, paths
from eniplane.lifecycle import U32_MAX
from eniplane.sgcompile import Rule

from . import topo as T

INNER_IP_OFF = 14 + 20 + 8 + 8 + 14  # inner IPv4 header in a VXLAN frame with no VLAN
INNER_SPORT_OFF = INNER_IP_OFF + 20


def _fwd_packet(t: T.Topo, sport: int, dst: str = T.SERVER, dport: int = 7) -> bytes:
    return bytes(Ether(src=t.mac[("gen", "g0")], dst=t.mac[("node", "fab0")]) /
                 IP(src=T.GEN_IP, dst=T.FABRIC_IP) / UDP(sport=49152, dport=4789, chksum=0) /
                 VXLAN(vni=T.VNI, flags=0x08) /
                 Ether(src=T.ENV_MAC, dst=T.GATEWAY_MAC) / IP(src=T.ENV_IP, dst=dst) /
                 UDP(sport=sport, dport=dport) / Raw(b"x" * 18))


def _variant(base: bytes, i: int) -> bytes:
    """Flow i: a distinct (destination, source port); checksums are not checked by the datapath
    on the way in, so only the fields that make the flow distinct change."""
    b = bytearray(base)
    dst = ipaddress.IPv4Address(T.SERVER).packed[:2] + struct.pack("!H", i & 0xFFFF)
    b[INNER_IP_OFF + 16: INNER_IP_OFF + 20] = dst
    struct.pack_into("!H", b, INNER_SPORT_OFF, 1024 + (i >> 16))
    return bytes(b)


class Runner:
    def __init__(self, t: T.Topo):
        self.t = t
        self.fds = {p: bpfsys.obj_get(str(paths.progs_dir(t.node_name) / p))
                    for p in ("xdp_fabric", "xdp_vpc")}

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)

    def durations(self, fd: int, packets: list[bytes], ifindex: int = 0) -> list[int]:
        out = []
        with netlink.in_netns(self.t.ns["node"]):
            for p in packets:
                rv, _, ns = bpfsys.prog_test_run(fd, p, out_size=len(p) + 128,
                                                 ingress_ifindex=ifindex)
                out.append(ns)
        return out


def floor_ns(n: int) -> float:
    from bcc import BPF

    from .gen import GEN_C

    b = BPF(src_file=str(GEN_C).encode(), cflags=["-DFRAME_LEN=64", "-DGEN_MAX_FLOWS=1",
                                                 "-Wno-unused-function"])
    fd = b.load_func(b"empty_xdp", BPF.XDP).fd
    pkt = bytes(110)
    ds = [bpfsys.prog_test_run(fd, pkt, out_size=256)[2] for _ in range(n)]
    b.cleanup()
    return statistics.median(ds)


def rules_for(n: int) -> list[Rule]:
    """n egress rules, as 5 groups of up to 60 would have them: distinct port ranges, one CIDR
    per rule, the last one allowing the benchmark's destination port 7."""
    out = [Rule.of("tcp", f"10.{i % 200}.0.0/16", (1000 + 10 * i, 1005 + 10 * i))
           for i in range(n - 1)]
    return out + [Rule.of("udp", "10.0.0.0/16", (7, 7))]


def run(n: int = 20_000, rule_counts: tuple[int, ...] = (1, 60, 300),
        progress=print) -> dict:
    res: dict = {"floor_ns": floor_ns(n)}
    progress(f"floor (empty XDP): {res['floor_ns']:.0f} ns")
    with T.Topo() as t:
        dp = t.eniplane()
        r = Runner(t)
        try:
            new = {}
            for rc in rule_counts:
                dp.set_sg_rules(T.VNI, rules_for(rc))
                dp.flush_flows()
                base = _fwd_packet(t, 1)
                pkts = [_variant(base, i) for i in range(n)]
                ds = r.durations(r.fds["xdp_fabric"], pkts)
                new[rc] = statistics.median(ds)
                progress(f"new flow, {rc} rules: {new[rc]:.0f} ns")
            res["new_flow_ns"] = new
            res["new_flows_per_s_per_core"] = {k: 1e9 / v for k, v in new.items() if v}
            dp.flush_flows()
            pkt = _fwd_packet(t, 40000)
            r.durations(r.fds["xdp_fabric"], [pkt])  # opens the flow
            res["established_fwd_ns"] = statistics.median(
                r.durations(r.fds["xdp_fabric"], [pkt] * n))
            progress(f"established forward: {res['established_fwd_ns']:.0f} ns")
            flow = dp.flows()[0]
            reply = bytes(Ether(src=t.mac[("sink", "s0")], dst=t.mac[("node", "vpca")]) /
                          IP(src=T.SERVER, dst=T.ENI_IP) /
                          UDP(sport=7, dport=flow["nat_port"]) / Raw(b"y" * 18))
            res["return_ns"] = statistics.median(
                r.durations(r.fds["xdp_vpc"], [reply] * n, t.ifindex[("node", "vpca")]))
            progress(f"return: {res['return_ns']:.0f} ns")
        finally:
            r.close()
            dp.close()
    f = res["floor_ns"] or 1
    res["ratios_to_floor"] = {
        "established_fwd": res["established_fwd_ns"] / f, "return": res["return_ns"] / f,
        **{f"new_flow_{k}_rules": v / f for k, v in res["new_flow_ns"].items()}}
    return res


def _memlock(fd: int) -> int:
    for line in open(f"/proc/self/fdinfo/{fd}"):
        if line.startswith("memlock:"):
            return int(line.split()[1])
    return 0


def scale(fill: int = 1_000_000, probe: int = 20_000, progress=print) -> dict:
    """Fill the flow tables with `fill` flows; the established path at that size; memory."""
    with T.Topo() as t:
        dp = t.eniplane(max_flows=max(1 << 20, 1 << (fill - 1).bit_length()))
        # one ENI holds every flow here: its limit (65,000 by default) must not be what stops
        # the fill or the flows past the table's capacity
        dp.set_flow_limit(U32_MAX)
        r = Runner(t)
        try:
            pkt = _fwd_packet(t, 40000)
            r.durations(r.fds["xdp_fabric"], [pkt])
            empty_ns = statistics.median(r.durations(r.fds["xdp_fabric"], [pkt] * probe))
            base = _fwd_packet(t, 1)
            t0 = time.monotonic()
            before = dp.stats()
            chunk = 50_000
            for start in range(0, fill, chunk):
                pkts = [_variant(base, i) for i in range(start, min(fill, start + chunk))]
                r.durations(r.fds["xdp_fabric"], pkts)
                progress(f"filled {min(fill, start + chunk):,} flows")
            wall = time.monotonic() - t0
            after = dp.stats()
            created = after["fwd_new_flow"] - before["fwd_new_flow"]
            # the established path on flows spread over the whole table: cold caches, as at scale
            sample = random.Random(1).sample(range(fill), min(probe, fill))
            full_ns = statistics.median(r.durations(r.fds["xdp_fabric"],
                                                    [_variant(base, i) for i in sample]))
            hot_ns = statistics.median(r.durations(r.fds["xdp_fabric"], [pkt] * probe))
            flows = dp.map("flows")
            n_flows = sum(1 for _ in flows.keys_raw())
            holes = dp.map("flow_guard").lookup(0)["holes"]
            # past the limit: LRU evicts the least recently used; new flows keep being admitted,
            # each walking its whole probe (flow_guard: evictions may have left holes)
            over = [_variant(base, i) for i in range(fill, fill + probe)]
            s0 = dp.stats()
            over_ns = statistics.median(r.durations(r.fds["xdp_fabric"], over))
            s1 = dp.stats()
            # a flow's memory: its `flows` entry and its share of flow_hot (types.h), whose
            # slots are a quarter of the table's capacity
            hot = dp.map("flow_hot")
            mem = _memlock(flows.fd) + _memlock(hot.fd)
            per_flow_kv = flows.key_size + flows.value_size + \
                hot.value_size * hot.max_entries // flows.max_entries
            res = {
                "fill": fill, "created": created, "entries": n_flows,
                "max_entries": flows.max_entries, "fill_wall_s": wall,
                "setup_rate_wall_per_s": created / wall if wall else 0,
                "established_ns_empty": empty_ns, "established_ns_full": full_ns,
                "established_ns_full_hot": hot_ns,
                "lookup_cost_ratio": full_ns / empty_ns if empty_ns else None,
                "bytes_per_flow_key_value": per_flow_kv,
                "bytes_per_flow_kernel": mem / flows.max_entries if flows.max_entries else None,
                "holes_after_fill": holes,
                "over_limit": {"offered": probe, "new_flow_ns": over_ns,
                               "admitted": s1["fwd_new_flow"] - s0["fwd_new_flow"],
                               "dropped": s1["xdp_drop"] - s0["xdp_drop"]},
            }
        finally:
            r.close()
            dp.close()
    return res
