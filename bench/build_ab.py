"""Two datapath builds side by side, live: the one A/B that the host's phases cannot decide.

Contract: `python -m bench.build_ab --old CHECKOUT [--new CHECKOUT] [--flows 65536] [--rounds 5]
[--seconds 1] [--copies 2] [--json F]` stages each build in `copies` topologies and nodes, in
mirrored order (A B B A), each node eniplane up from that checkout's bpf/ through
ENIPLANE_BPF_DIR (the control plane is this tree's, so the builds must agree on map layouts),
opens the same flows in each (shuffled, as the bench does), and then, in rounds whose order
alternates, times each node's program per packet (run_time_ns / run_cnt) forward and return,
each beside its own state floor. A build's figure in a round is the median of its nodes'.
Consecutive runs of one build differ by up to 2x on this VM as its host's neighbours come and go
(docs/performance.md, "Issue 16, continued"); runs a second apart share the phase, so the
per-round differences between builds, and each build's gap to its floor, are what to read.
One build differs from itself between nodes, too: where the kernel puts a program's JIT image
(it picks the offset at random) once cost xdp_fabric 38-41 ns per packet at one flow, on every
load at that address (docs/performance.md, "Where the program lands"), and at 64k flows the
nodes' tables sit in memory of their own (an A/A run read one node 29 ns slower). So each build
gets nodes staged early and late, and the per-node table that follows the comparison shows how
far a build's nodes disagree: a difference between builds smaller than that is not one.
Prints medians (min-max) and writes every round with --json ("nodes": each node's own rounds);
`make bench` does not run it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from pathlib import Path


from . import report
from . import throughput as TP
from . import topo as T
from .gen import pin_cpu0, rfc4814_ports

ROOT = Path(__file__).resolve().parents[1]
DIRECTIONS = ("forward", "return")


def _stage(st: contextlib.ExitStack, bpf: Path, n: int, max_flows: int) -> tuple:
    """One build's node, its flows opened, and the generators for eniplane and its floor."""
    os.environ["ENIPLANE_BPF_DIR"] = str(bpf)
    t, dp = st.enter_context(TP.staged_for_timing(max_flows))
    ports = rfc4814_ports(n)
    dp.flush_flows()
    TP.open_flows(t, "xdp", ports)
    fwd = TP._generator("xdp", t, "forward", ports)
    st.callback(fwd.close)
    ret = TP._generator("xdp", t, "return", TP.reply_ports(t, "eniplane", ports, dp))
    st.callback(ret.close)
    floor_ret = TP._generator("xdp", t, "return", TP.reply_ports(t, "linux", ports))
    st.callback(floor_ret.close)
    return t, {("eniplane", "forward"): fwd, ("eniplane", "return"): ret,
               ("state-floor", "forward"): fwd, ("state-floor", "return"): floor_ret}


def run(builds: dict[str, Path], n: int, rounds: int, seconds: float, max_flows: int,
        progress=print, copies: int = 2) -> dict:
    """Each build staged `copies` times, in mirrored order (A B B A for two), so that a build's
    figure is the median of nodes staged early and late (with two, their mean): one build in two
    nodes differs by itself (up to 13 ns at one flow and 29 at 64k flows, in A/A runs of
    2026-11-30), and the mirror takes out what goes with the staging order. Returns
    {direction: {build: {scenario: [ns per round]}}} and, under "nodes", each node's own
    figures."""
    pin_cpu0()
    before = os.environ.get("ENIPLANE_BPF_DIR")
    names = list(builds)
    staging = [names[(i if c % 2 == 0 else len(names) - 1 - i)]
               for c in range(copies) for i in range(len(names))]
    per_node: dict[tuple[int, str, str], list[float]] = {}
    try:
        with contextlib.ExitStack() as st:
            nodes = [(name, _stage(st, builds[name], n, max_flows)) for name in staging]
            for r in range(-1, rounds):  # round -1 warms every node both ways
                for d in DIRECTIONS:
                    order = list(range(len(nodes)))
                    if r % 2 == 0:
                        order.reverse()
                    for i in order:
                        t, gens = nodes[i][1]
                        for scen in ("eniplane", "state-floor"):
                            t.use(scen, d)
                            gen = gens[(scen, d)]
                            runs, ns = TP.program_runs(
                                t.node_prog_fd(scen, d),
                                lambda: gen.run(seconds if r >= 0 else 0.3))
                            if r >= 0 and runs > 0:
                                per_node.setdefault((i, d, scen), []).append(ns)
                if r >= 0:
                    progress(f"round {r + 1}/{rounds}: " + ", ".join(
                        f"{name}#{i} {d} {per_node[(i, d, 'eniplane')][-1]:.0f} "
                        f"(floor {per_node[(i, d, 'state-floor')][-1]:.0f})"
                        for d in DIRECTIONS for i, (name, _) in enumerate(nodes)
                        if (i, d, "eniplane") in per_node and (i, d, "state-floor") in per_node))
    finally:
        if before is None:
            os.environ.pop("ENIPLANE_BPF_DIR", None)
        else:
            os.environ["ENIPLANE_BPF_DIR"] = before
    res: dict = {"nodes": {}}
    for (i, d, scen), v in per_node.items():
        res["nodes"].setdefault(d, {}).setdefault(f"{staging[i]}#{i}", {})[scen] = v
    for d in DIRECTIONS:
        for name in names:
            for scen in ("eniplane", "state-floor"):
                runs = [per_node[(i, d, scen)] for i, b in enumerate(staging)
                        if b == name and (i, d, scen) in per_node]
                if runs:  # per round, the median of the build's nodes (with two, the mean)
                    res.setdefault(d, {}).setdefault(name, {})[scen] = \
                        [statistics.median(x) for x in zip(*runs)]
    return res


def _med(v: list[float]) -> str:
    return f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})"


def table(res: dict, old: str = "old", new: str = "new") -> str:
    lines = ["| direction | build | eniplane | state floor | gap to the floor | new - old |",
             "|---|---|---|---|---|---|"]
    for d in DIRECTIONS:
        by = res.get(d, {})
        for name, cases in by.items():
            e, f = cases.get("eniplane"), cases.get("state-floor")
            if not (e and f):
                continue
            gaps = [x - y for x, y in zip(e, f)]
            diff = ""
            if name == new and old in by and by[old].get("eniplane"):
                per = [x - y for x, y in zip(e, by[old]["eniplane"])]
                diff = f"{statistics.median(per):+.0f} ({min(per):+.0f} to {max(per):+.0f})"
            lines.append(f"| {d} | {name} | {_med(e)} | {_med(f)} | "
                         f"{statistics.median(gaps):+.0f} | {diff} |")
    nodes = res.get("nodes", {})
    if nodes:
        lines += ["", "Each node by itself (a build's nodes differ by this much on their own):",
                  "", "| direction | node | eniplane | state floor |", "|---|---|---|---|"]
        for d in DIRECTIONS:
            for node, cases in sorted(nodes.get(d, {}).items(),
                                      key=lambda kv: int(kv[0].rsplit("#", 1)[1])):
                e, f = cases.get("eniplane"), cases.get("state-floor")
                if e and f:
                    lines.append(f"| {d} | {node} | {_med(e)} | {_med(f)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.build_ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, metavar="CHECKOUT")
    ap.add_argument("--new", type=Path, default=ROOT, metavar="CHECKOUT")
    ap.add_argument("--flows", type=int, default=65536)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--max-flows", type=int, default=T.DEFAULT_MAX_FLOWS)
    ap.add_argument("--copies", type=int, default=2,
                    help="nodes per build, staged in mirrored order (default 2: A B B A)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.copies < 1:
        ap.error("--copies must be at least 1")
    for c in (a.old, a.new):
        if not (c / "bpf" / "eniplane.c").is_file():
            ap.error(f"{c} is not a checkout of eniplane (no bpf/eniplane.c)")
    res = run({"old": a.old / "bpf", "new": a.new / "bpf"}, a.flows, a.rounds, a.seconds,
              a.max_flows, progress=report.progress, copies=a.copies)
    return report.finish(table(res), res, a.json)


if __name__ == "__main__":
    sys.exit(main())
