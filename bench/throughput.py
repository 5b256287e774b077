"""Throughput in the benchmark topology: ceiling, state floor, eniplane and the Linux stack, side
by side.

Contract: for each flow count and direction the scenarios are staged together and their repeats
interleaved (the machine drifts, so only figures taken side by side compare): packets counted by
the sink per second, median of `repeats` runs of `seconds` each, with min and max. Forward:
VXLAN frames from the generator namespace to the VPC sink. Return: plain replies from the VPC
namespace to the ENI address, encapsulated back to the generator namespace. Flows are created by
a warm-up before anything is measured, in another order than the runs then send them in
(open_flows).
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
from contextlib import contextmanager
from typing import Callable, Iterator

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from . import memlat
from . import topo as T
from .gen import Sink, XdpGenerator, rfc4814_ports

# Table sizes whose load cost tells the host's phase (bench.memlat): in the cache, at its edge
# on this VM, past it (docs/operations.md, "What a larger table costs per packet")
PHASE_MIB = (4, 8, 16)
FWD_LEN = 110  # the VXLAN frame size of the shared notes' reference figures
RET_LEN = 64
FWD_SPORT_OFF, FWD_DPORT_OFF = 84, 86  # inner UDP ports in a VXLAN frame
GENEVE_OPT = bytes([0x01, 0x02, 0x03, 0x01, 0xAA, 0xBB, 0xCC, 0xDD])  # one 8-byte option
GENEVE_SPORT_OFF, GENEVE_DPORT_OFF = 84 + len(GENEVE_OPT), 86 + len(GENEVE_OPT)
RET_SPORT_OFF, RET_DPORT_OFF = 34, 36
OUTER_SPORT_OFF = 34  # a tunnel frame's outer UDP source port, one per flow as RFC 7348 senders pick


def fwd_template(t: T.Topo) -> bytes:
    inner = Ether(src=T.ENV_MAC, dst=T.GATEWAY_MAC) / IP(src=T.ENV_IP, dst=T.SERVER) / \
        UDP(sport=1, dport=1, chksum=0)
    f = Ether(src=t.mac[("gen", "g0")], dst=t.mac[("node", "fab0")]) / \
        IP(src=T.GEN_IP, dst=T.FABRIC_IP) / UDP(sport=49152, dport=4789, chksum=0) / \
        VXLAN(vni=T.VNI, flags=0x08) / inner
    raw = bytes(f)
    pad = FWD_LEN - len(raw)
    return bytes(Ether(raw) / Raw(b"\0" * pad)) if pad > 0 else raw


def geneve_template(t: T.Topo) -> bytes:
    """The VXLAN template's inner frame in GENEVE, with one option (RFC 8926)."""
    inner = Ether(src=T.ENV_MAC, dst=T.GATEWAY_MAC) / IP(src=T.ENV_IP, dst=T.SERVER) / \
        UDP(sport=1, dport=1, chksum=0)
    gen = bytes([len(GENEVE_OPT) // 4, 0, 0x65, 0x58]) + T.VNI.to_bytes(3, "big") + b"\0" + GENEVE_OPT
    f = Ether(src=t.mac[("gen", "g0")], dst=t.mac[("node", "fab0")]) / \
        IP(src=T.GEN_IP, dst=T.FABRIC_IP) / UDP(sport=49152, dport=6081, chksum=0) / \
        Raw(gen) / inner
    raw = bytes(f)
    pad = FWD_LEN + len(GENEVE_OPT) - len(raw)
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


def _staged(scenario: str) -> str:
    """The staged set-up a scenario runs on: both eniplane tunnels run on eniplane's."""
    return "eniplane" if scenario.startswith("eniplane") else scenario


def interleaved(t: T.Topo, direction: str, gens: dict, sink: Sink, seconds: float,
                repeats: int, progress: Callable[[str], None], label: str) -> dict[str, dict]:
    """Each repeat measures every scenario once, in turn, so that the host's drift (up to 2x
    within half an hour here) falls on all of them alike and the ratios hold. A generator
    throttles to what the path takes, so the rate that sizes its next run is kept per scenario."""
    rates: dict[str, list[float]] = {s: [] for s in gens}
    learned: dict[str, float] = {}

    def once(s: str, secs: float) -> float:
        gen = gens[s]
        t.use(_staged(s), direction)
        if hasattr(gen, "rate"):
            gen.rate = learned.get(s, 0.0)
        before = sink.count()
        _, elapsed = gen.run(secs)
        got = sink.count() - before
        if hasattr(gen, "rate"):
            learned[s] = gen.rate
        return got / elapsed / 1e6

    for s in gens:  # calibration: learns each scenario's rate
        once(s, min(seconds, 0.5))
    for r in range(repeats):
        for s in gens:
            rates[s].append(once(s, seconds))
        progress(f"{label}, round {r + 1}/{repeats}: " +
                 ", ".join(f"{s} {rates[s][-1]:.2f}" for s in gens) + " Mpps")
    return {s: {"mpps": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
            for s, v in rates.items()}


def program_ns(t: T.Topo, direction: str, gens: dict, seconds: float) -> dict[str, float]:
    """Nanoseconds per packet of the program doing each scenario's work on the node, from the
    kernel's run-time accounting. It is switched on only for this pass, after the measured
    rounds: its two clock reads per program run cost tens of ns in a VM and would slow the
    rates. Read differences between scenarios, not absolute figures. The Linux stack runs no
    program of its own and has no entry."""
    import os

    from eniplane import bpfsys

    out: dict[str, float] = {}
    try:
        stats = bpfsys.enable_run_time_stats()
    except bpfsys.BpfError:  # kernels before 5.8 have no BPF_ENABLE_STATS: no figures, no harm
        return out
    try:
        for s, gen in gens.items():
            if s == "linux":
                continue
            t.use(_staged(s), direction)
            runs, ns = program_runs(t.node_prog_fd(_staged(s), direction),
                                    lambda: gen.run(seconds))
            if runs > 0:
                out[s] = ns
    finally:
        os.close(stats)
    return out


def reply_ports(t: T.Topo, scenario: str, ports: list[tuple[int, int]], dp=None) -> list:
    """The (source, destination) ports of the replies to the flows that the warm-up opened."""
    if scenario == "eniplane":
        nat = {(f["env_port"], f["remote_port"]): f["nat_port"] for f in dp.flows()}
        return [(d, nat[(s, d)]) for s, d in ports if (s, d) in nat]
    # ceiling: no translation; linux: masquerade keeps a free source port as it is
    return [(d, s) for s, d in ports]


def _generator(backend: str, t: T.Topo, direction: str, ports: list[tuple[int, int]],
               tunnel: str = "vxlan"):
    """The generator for one direction: XDP live frames, or pktgen where the kernel has it
    (forward through a VXLAN or GENEVE device of the generator's namespace, which pktgen feeds
    inner frames; return straight out of the VPC host's interface)."""
    if backend == "pktgen":
        from .gen import PktgenGenerator

        if direction == "forward":
            dev = t.tunnel_device(tunnel)
            return PktgenGenerator(t.ns["gen"], dev, T.SERVER, T.GATEWAY_MAC, ports, size=64,
                                   src_ip=T.ENV_IP)
        return PktgenGenerator(t.ns["sink"], "s0", T.ENI_IP, t.mac[("node", "vpca")], ports,
                               size=RET_LEN, src_ip=T.SERVER)
    if direction == "forward" and tunnel == "geneve":
        return XdpGenerator(t.ns["gen"], "g0", _fix_lengths(geneve_template(t)), ports,
                            GENEVE_SPORT_OFF, GENEVE_DPORT_OFF, OUTER_SPORT_OFF)
    if direction == "forward":
        return XdpGenerator(t.ns["gen"], "g0", _fix_lengths(fwd_template(t)), ports,
                            FWD_SPORT_OFF, FWD_DPORT_OFF, OUTER_SPORT_OFF)
    return XdpGenerator(t.ns["sink"], "s0", _fix_lengths(ret_template(t)), ports or [(1, 1)],
                        RET_SPORT_OFF, RET_DPORT_OFF)


def shuffled(ports: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The flows in the order open_flows opens them: shuffled, the same way every run."""
    order = list(ports)
    random.Random(len(ports)).shuffle(order)
    return order


def program_runs(fd: int, run: Callable[[], object]) -> tuple[int, float]:
    """How many times the program `fd` ran while `run()` sent it packets, and its nanoseconds
    per run (0.0 when it never ran), by the kernel's run-time accounting (which must be on)."""
    from eniplane import bpfsys

    a = bpfsys.prog_info(fd)
    run()
    b = bpfsys.prog_info(fd)
    runs = b.run_cnt - a.run_cnt
    return runs, (b.run_time_ns - a.run_time_ns) / runs if runs > 0 else 0.0


def open_flows(t: T.Topo, backend: str, ports: list[tuple[int, int]],
               scenarios: tuple[str, ...] = ("eniplane",)) -> None:
    """Open every flow (forward, two packets each) in the given scenarios, in a shuffled order.
    The runs send flows round-robin in `ports`' order; a table that hands out entries in the
    order flows arrive (the kernel's LRU hash, conntrack's slab) would find them laid out in
    memory in the order they are then sent, and read them as a stream, which no real traffic
    gives it: measured at 64k flows, eniplane's flows entries cost 100-180 ns less per packet
    opened in order (bench/hot_ab.py, with --in-order and without)."""
    opener = _generator(backend, t, "forward", shuffled(ports))
    try:
        for s in scenarios:
            t.use(s, "forward")
            opener.run(0, max_packets=max(2 * len(ports), 1000))
    finally:
        opener.close()


@contextmanager
def staged_for_timing(max_flows: int) -> Iterator[tuple[T.Topo, object]]:
    """The topology staged (every scenario loaded, eniplane up), sinks on both far ends as the
    bench has them (without a program on the receiving veth every redirect would fail, and the
    kernel's failure path would run with each packet), and the kernel's run-time accounting on:
    for the tools that time the node's programs (hot_ab, profile). Yields (topology, Datapath)."""
    from eniplane import bpfsys

    with T.Topo() as t:
        dp = t.stage(FWD_SPORT_OFF, RET_SPORT_OFF, max_flows)
        sinks = [Sink(t.ns["sink"], "s0"), Sink(t.ns["gen"], "g0")]
        stats = bpfsys.enable_run_time_stats()
        try:
            yield t, dp
        finally:
            os.close(stats)
            for s in sinks:
                s.close()
            dp.close()


def run(flow_counts: list[int], seconds: float, repeats: int,
        progress: Callable[[str], None] = print, backend: str = "xdp",
        max_flows: int = T.DEFAULT_MAX_FLOWS) -> list[dict]:
    from .gen import pin_cpu0

    pin_cpu0()
    results = []
    chase = memlat.Chase(max(PHASE_MIB))
    with contextlib.closing(chase), T.Topo() as t:
        dp = t.stage(FWD_SPORT_OFF, RET_SPORT_OFF, max_flows)
        fwd_sink = Sink(t.ns["sink"], "s0")
        ret_sink = Sink(t.ns["gen"], "g0")
        try:
            for n in flow_counts:
                ports = rfc4814_ports(n)
                dp.flush_flows()
                fwd = _generator(backend, t, "forward", ports)
                made = [fwd]
                try:
                    gens_fwd = {"ceiling": fwd, "state-floor": fwd, "eniplane": fwd,
                                "linux": fwd}
                    if backend == "xdp" or t.has_geneve():
                        made.append(_generator(backend, t, "forward", ports, "geneve"))
                        gens_fwd["eniplane-geneve"] = made[-1]
                    # warm-up: every flow opened in eniplane's table and in conntrack
                    open_flows(t, backend, ports, ("eniplane", "linux"))
                    made.append(_generator(backend, t, "return",
                                           reply_ports(t, "eniplane", ports, dp)))
                    ret_eni = made[-1]
                    made.append(_generator(backend, t, "return",
                                           reply_ports(t, "linux", ports)))
                    gens_ret = {"ceiling": made[-1], "state-floor": made[-1],
                                "eniplane": ret_eni, "linux": made[-1]}
                    for direction, gens, sink in (("forward", gens_fwd, fwd_sink),
                                                  ("return", gens_ret, ret_sink)):
                        before = t.state_counts(direction)
                        res = interleaved(t, direction, gens, sink, seconds, repeats, progress,
                                          f"{direction}, {n} flows")
                        after = t.state_counts(direction)
                        # proof that the floor kept state: most packets found their flow's entry;
                        # made counts first packets and flows that took back a shared slot
                        res["state-floor"]["entries"] = {k: after[k] - before[k] for k in after}
                        timed = program_ns(t, direction, gens, min(seconds, 0.5))
                        # the host's phase as the pass met it: what a load from tables of
                        # these sizes cost (bench.memlat), beside the figures it explains
                        phase = {f"{m:g}": chase.ns_per_load(m) for m in PHASE_MIB}
                        for s, ns in timed.items():
                            res[s]["program_ns"] = ns
                        for r in res.values():
                            r["memlat_ns"] = phase
                        progress(f"{direction}, {n} flows, ns per packet on the node: " +
                                 (", ".join(f"{s} {ns:.0f}" for s, ns in timed.items())
                                  or "not available (no BPF_ENABLE_STATS)") +
                                 "; ns per load over " + " / ".join(phase) + " MiB: " +
                                 " / ".join(f"{v:.0f}" for v in phase.values()))
                        for s, r in res.items():
                            results.append({"direction": direction, "scenario": s, "flows": n,
                                            "generator": backend, **r})
                finally:
                    for g in made:
                        g.close()
        finally:
            fwd_sink.close()
            ret_sink.close()
            dp.close()
    return results


def ratios(results: list[dict]) -> list[dict]:
    out = []
    by = {(r["direction"], r["scenario"], r["flows"]): r["mpps"] for r in results}
    for (d, s, n), v in by.items():
        if not s.startswith("eniplane"):
            continue
        c, lx = by.get((d, "ceiling", n)), by.get((d, "linux", n))
        sf = by.get((d, "state-floor", n))
        out.append({"direction": d, "scenario": s, "flows": n, "eniplane_mpps": v,
                    "vs_ceiling": v / c if c else None, "vs_linux": v / lx if lx else None,
                    "vs_state_floor": v / sf if sf else None,
                    "state_floor_vs_ceiling": sf / c if sf and c else None})
    return out
