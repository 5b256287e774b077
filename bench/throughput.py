"""Throughput in the benchmark topology: ceiling vs eniplane vs the Linux stack, side by side.

Contract: for each flow count, each scenario is measured in the same run (the machine drifts, so
only side-by-side figures compare): packets counted by the sink per second, median of `repeats`
runs of `seconds` each, with min and max. Forward: VXLAN frames from the generator namespace to
the VPC sink. Return: plain replies from the VPC namespace to the ENI address, encapsulated back
to the generator namespace. Flows are created by a warm-up before anything is measured.
"""

from __future__ import annotations

import statistics
from typing import Callable

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from . import topo as T
from .gen import Sink, XdpGenerator, rfc4814_ports

FWD_LEN = 110  # the VXLAN frame size of the shared notes' reference figures
RET_LEN = 64
FWD_SPORT_OFF, FWD_DPORT_OFF = 84, 86  # inner UDP ports in a VXLAN frame
RET_SPORT_OFF, RET_DPORT_OFF = 34, 36


def fwd_template(t: T.Topo) -> bytes:
    inner = Ether(src=T.ENV_MAC, dst=T.GATEWAY_MAC) / IP(src=T.ENV_IP, dst=T.SERVER) / \
        UDP(sport=1, dport=1, chksum=0)
    f = Ether(src=t.mac[("gen", "g0")], dst=t.mac[("node", "fab0")]) / \
        IP(src=T.GEN_IP, dst=T.FABRIC_IP) / UDP(sport=49152, dport=4789, chksum=0) / \
        VXLAN(vni=T.VNI, flags=0x08) / inner
    raw = bytes(f)
    pad = FWD_LEN - len(raw)
    return bytes(Ether(raw) / Raw(b"\0" * pad)) if pad > 0 else raw


def ret_template(t: T.Topo) -> bytes:
    f = Ether(src=t.mac[("sink", "s0")], dst=t.mac[("node", "vpca")]) / \
        IP(src=T.SERVER, dst=T.ENI_IP) / UDP(sport=1, dport=1, chksum=0)
    return bytes(f / Raw(b"\0" * (RET_LEN - len(bytes(f)))))


def _fix_lengths(raw: bytes) -> bytes:
    """scapy computed lengths before padding was added: rebuild so lengths cover the padding."""
    p = Ether(raw)
    for layer in (IP, UDP):
        for lay in p.getlayer(layer, nb=1), p.getlayer(layer, nb=2):
            if lay is not None:
                del lay.len
                if layer is IP:
                    del lay.chksum
    return bytes(p)


def measure(gen, sink: Sink, seconds: float, repeats: int) -> dict:
    gen.run(min(seconds, 0.5))  # calibration: learns the rate that sizes each measured call
    rates = []
    for _ in range(repeats):
        before = sink.count()
        sent, elapsed = gen.run(seconds)
        got = sink.count() - before
        rates.append(got / elapsed / 1e6)
    return {"mpps": statistics.median(rates), "min": min(rates), "max": max(rates),
            "runs": rates}


def reply_ports(t: T.Topo, scenario: str, ports: list[tuple[int, int]], dp=None) -> list:
    """The (source, destination) ports of the replies to the flows that the warm-up opened."""
    if scenario == "eniplane":
        nat = {(f["key"]["sport"], f["key"]["dport"]): f["fwd"]["nat_port"] for f in dp.flows()}
        return [(d, nat[(s, d)]) for s, d in ports if (s, d) in nat]
    # ceiling: no translation; linux: masquerade keeps a free source port as it is
    return [(d, s) for s, d in ports]


def run(flow_counts: list[int], seconds: float, repeats: int,
        progress: Callable[[str], None] = print) -> list[dict]:
    from .gen import pin_cpu0

    pin_cpu0()
    results = []
    with T.Topo() as t:
        fwd_sink = Sink(t.ns["sink"], "s0")
        try:
            for n in flow_counts:
                ports = rfc4814_ports(n)
                for scenario in ("ceiling", "eniplane", "linux"):
                    progress(f"forward {scenario}, {n} flows")
                    dp = None
                    if scenario == "ceiling":
                        t.ceiling()
                    elif scenario == "eniplane":
                        dp = t.eniplane()
                    else:
                        t.linux()
                    gen = XdpGenerator(t.ns["gen"], "g0", _fix_lengths(fwd_template(t)), ports,
                                       FWD_SPORT_OFF, FWD_DPORT_OFF)
                    try:
                        gen.run(0, max_packets=max(2 * n, 1000))  # warm-up: every flow opened
                        r = measure(gen, fwd_sink, seconds, repeats)
                    finally:
                        gen.close()
                    results.append({"direction": "forward", "scenario": scenario, "flows": n, **r})
                    progress(f"  {r['mpps']:.2f} Mpps")
                    # the return path, while the flows exist
                    progress(f"return {scenario}, {n} flows")
                    if scenario == "ceiling":
                        t.ceiling(reverse=True)
                    rports = reply_ports(t, scenario, ports, dp)
                    ret_sink = Sink(t.ns["gen"], "g0")
                    gen = XdpGenerator(t.ns["sink"], "s0", _fix_lengths(ret_template(t)),
                                       rports or [(1, 1)], RET_SPORT_OFF, RET_DPORT_OFF)
                    try:
                        r = measure(gen, ret_sink, seconds, repeats)
                    finally:
                        gen.close()
                        ret_sink.close()
                    if dp is not None:
                        dp.close()
                    results.append({"direction": "return", "scenario": scenario, "flows": n,
                                    **r})
                    progress(f"  {r['mpps']:.2f} Mpps")
        finally:
            fwd_sink.close()
    return results


def ratios(results: list[dict]) -> list[dict]:
    out = []
    by = {(r["direction"], r["scenario"], r["flows"]): r["mpps"] for r in results}
    for (d, s, n), v in by.items():
        if s != "eniplane":
            continue
        c, lx = by.get((d, "ceiling", n)), by.get((d, "linux", n))
        out.append({"direction": d, "flows": n, "eniplane_mpps": v,
                    "vs_ceiling": v / c if c else None, "vs_linux": v / lx if lx else None})
    return out
