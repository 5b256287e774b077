"""Which floor: the state floor's variants and the generator's, one difference at a time.

Contract: `python -m bench.floor_ab [--flows 1,65536] [--rounds 5] [--seconds 1] [--json F]`
stages the benchmark topology once per flow count and, in interleaved rounds (the order rotates
every round), times the node's program per packet with the kernel's run-time accounting
(run_time_ns / run_cnt, BPF_ENABLE_STATS on for the whole run) in forward VXLAN for:
  ceiling, the state floor as staged by the bench, the floor with one difference each (direct
  indexing or the 4-way sets the bench used before, bpf_redirect instead of the DEVMAP, a
  generator that varies the outer UDP source port per flow), eniplane with either generator,
  and "index + pool", a design with a translator's whole 64-byte entry per flow (gen.c,
  STATE_POOL) that issue 16 weighs against the floor.
Every table is opened in a shuffled order first, as the bench opens eniplane's.
It prints medians (min-max) per flow count and writes every round with --json. It exists to
answer issue 16's first question and to be re-run when the floor changes; `make bench` does not
run it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from eniplane import bpfsys, netlink

from . import report
from . import topo as T
from . import throughput as TP
from .gen import Sink, XdpGenerator, pin_cpu0, rfc4814_ports


def _variants(t: T.Topo, max_flows: int, base: dict[str, int],
              align: bool = False) -> dict[str, tuple[object, int]]:
    """The floor as the bench stages it (`base`: its defines) and with each difference alone."""
    vpca = t.ifindex[("node", "vpca")]
    out = {}
    for name, extra in (("floor", {}), ("floor direct", {"STATE_WAYS": 1}),
                        ("floor 4-way (the bench's before)", {"STATE_WAYS": 4}),
                        ("floor bpf_redirect", {"REDIRECT_IFINDEX": vpca}),
                        ("floor direct+bpf_redirect", {"STATE_WAYS": 1,
                                                       "REDIRECT_IFINDEX": vpca}),
                        ("index + pool (a design, not a floor)", {"STATE_POOL": 1}),
                        ("index + pool + 600 adds", {"STATE_POOL": 1, "STATE_WORK": 600})):
        out[name] = t._load_ceiling(False, max_flows, TP.FWD_SPORT_OFF, {**base, **extra})
    if align:  # a 4-way set moved by k entries: one of the four k starts on a cache line
        for k in range(1, 4):
            out[f"floor 4-way +{k}"] = t._load_ceiling(
                False, max_flows, TP.FWD_SPORT_OFF, {**base, "STATE_WAYS": 4,
                                                     "STATE_SET_SHIFT": k})
    return out


def run(flow_counts: list[int], rounds: int, seconds: float, max_flows: int,
        progress=print, align: bool = False) -> dict:
    pin_cpu0()
    res: dict = {}
    with T.Topo() as t:
        dp = t.stage(TP.FWD_SPORT_OFF, TP.RET_SPORT_OFF, max_flows)
        floors = _variants(t, max_flows, {}, align)
        sink = Sink(t.ns["sink"], "s0")  # as in the bench: what arrives is dropped at once
        pass_fd = t._fds["pass"]
        stats = bpfsys.enable_run_time_stats()
        try:
            for n in flow_counts:
                ports = rfc4814_ports(n)
                dp.flush_flows()
                tmpl = TP._fix_lengths(TP.fwd_template(t))
                gens = {"inner": XdpGenerator(t.ns["gen"], "g0", tmpl, ports, TP.FWD_SPORT_OFF,
                                              TP.FWD_DPORT_OFF),
                        "outer": XdpGenerator(t.ns["gen"], "g0", tmpl, ports, TP.FWD_SPORT_OFF,
                                              TP.FWD_DPORT_OFF, TP.OUTER_SPORT_OFF)}
                try:
                    # every table opened in a shuffled order, as the bench opens eniplane's
                    # (throughput.open_flows): tables that hand out entries in arrival order
                    # would otherwise read them as a stream
                    opener = XdpGenerator(t.ns["gen"], "g0", tmpl, TP.shuffled(ports),
                                          TP.FWD_SPORT_OFF, TP.FWD_DPORT_OFF)
                    try:
                        t.use("eniplane", "forward")
                        opener.run(0, max_packets=max(2 * n, 1000))
                        for _, fd in floors.values():
                            netlink.xdp_attach(t.ns["node"], "fab0", fd, "native",
                                               replace=True)
                            opener.run(0, max_packets=max(2 * n, 1000))
                    finally:
                        opener.close()
                    # (program fd on fab0, fd on vpca, generator)
                    fab = t.node_prog_fd("eniplane", "forward")
                    cases = {"ceiling": (t.node_prog_fd("ceiling", "forward"), pass_fd, "inner"),
                             "eniplane": (fab, t._fds["xdp_vpc"], "inner"),
                             "eniplane outer-sport gen": (fab, t._fds["xdp_vpc"], "outer")}
                    for name, (_, fd) in floors.items():
                        cases[name] = (fd, pass_fd, "inner")
                    cases["floor outer-sport gen"] = (floors["floor"][1], pass_fd, "outer")
                    names = list(cases)
                    got: dict[str, list[float]] = {c: [] for c in names}
                    for r in range(-1, rounds):  # round -1 warms every floor's table
                        order = names[r % len(names):] + names[:r % len(names)] if r >= 0 \
                            else names
                        for c in order:
                            fab_fd, vpc_fd, g = cases[c]
                            netlink.xdp_attach(t.ns["node"], "fab0", fab_fd, "native",
                                               replace=True)
                            netlink.xdp_attach(t.ns["node"], "vpca", vpc_fd, "native",
                                               replace=True)
                            gen = gens[g]
                            runs, ns = TP.program_runs(
                                fab_fd, lambda: gen.run(seconds if r >= 0 else 0.3))
                            if r >= 0 and runs > 0:
                                got[c].append(ns)
                        if r >= 0:
                            progress(f"{n} flows, round {r + 1}/{rounds}: " +
                                     ", ".join(f"{c} {got[c][-1]:.0f}" for c in names))
                    res[n] = {c: {"ns": statistics.median(v), "min": min(v), "max": max(v),
                                  "runs": v} for c, v in got.items() if v}
                finally:
                    for g in gens.values():
                        g.close()
        finally:
            os.close(stats)
            sink.close()
            for b, _ in floors.values():
                b.cleanup()
            dp.close()
    return res


def table(res: dict) -> str:
    ns = sorted(res)
    lo, hi = ns[0], ns[-1]
    lines = [f"| variant | {lo} flow(s) ns | {hi:,} flows ns | growth ns |", "|---|---|---|---|"]
    for c in res[lo]:
        a, b = res[lo][c], res[hi].get(c)
        if not b:
            continue
        lines.append(f"| {c} | {a['ns']:.0f} ({a['min']:.0f}-{a['max']:.0f}) | "
                     f"{b['ns']:.0f} ({b['min']:.0f}-{b['max']:.0f}) | {b['ns'] - a['ns']:+.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.floor_ab", description=__doc__)
    ap.add_argument("--flows", default="1,65536")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--max-flows", type=int, default=T.DEFAULT_MAX_FLOWS)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--align", action="store_true",
                    help="also the 4-way floor with its sets moved by 1-3 entries")
    a = ap.parse_args(argv)
    from eniplane.signals import exit_on_sigterm

    exit_on_sigterm()
    res = run([int(x) for x in a.flows.split(",")], a.rounds, a.seconds, a.max_flows,
              report.progress, a.align)
    return report.finish(table(res), res, a.json)


if __name__ == "__main__":
    sys.exit(main())
