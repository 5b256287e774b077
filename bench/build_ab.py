"""Two datapath builds side by side, live: the one A/B that the host's phases cannot decide.

Contract: `python -m bench.build_ab --old CHECKOUT [--new CHECKOUT] [--flows 65536] [--rounds 5]
[--seconds 1] [--json F]` stages one benchmark topology per build (each its own namespaces and
node, eniplane up from that checkout's bpf/ through ENIPLANE_BPF_DIR; the control plane is this
tree's, so the builds must agree on map layouts), opens the same flows in each (shuffled, as the
bench does), and then, in rounds whose order alternates, times each node's program per packet
(run_time_ns / run_cnt) forward and return, each beside its own state floor. Consecutive runs of
one build differ by up to 2x on this VM as its host's neighbours come and go (docs/performance.md,
"Issue 16, continued"); runs a second apart share the phase, so the per-round differences
between builds, and each build's gap to its floor, are what to read. The two nodes' tables sit
in memory of their own, which the rounds cannot alternate: at 64k flows an A/A run (one build
in both nodes, 2026-11-30) read the second node 29 ns slower forward, and the reverse order of
an A/B then read -1 where the first order read +29. So at 64k flows run an A/B both ways round
before reading a difference under about 30 ns; at one flow two nodes agree within a few ns.
Prints medians (min-max) and writes every round with --json; `make bench` does not run it.
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
        progress=print) -> dict:
    pin_cpu0()
    before = os.environ.get("ENIPLANE_BPF_DIR")
    got: dict[tuple[str, str, str], list[float]] = {}
    try:
        with contextlib.ExitStack() as st:
            nodes = {name: _stage(st, bpf, n, max_flows) for name, bpf in builds.items()}
            for r in range(-1, rounds):  # round -1 warms every node both ways
                for d in DIRECTIONS:
                    order = list(nodes) if r % 2 else list(nodes)[::-1]
                    for name in order:
                        t, gens = nodes[name]
                        for scen in ("eniplane", "state-floor"):
                            t.use(scen, d)
                            gen = gens[(scen, d)]
                            runs, ns = TP.program_runs(
                                t.node_prog_fd(scen, d),
                                lambda: gen.run(seconds if r >= 0 else 0.3))
                            if r >= 0 and runs > 0:
                                got.setdefault((name, d, scen), []).append(ns)
                if r >= 0:
                    progress(f"round {r + 1}/{rounds}: " + ", ".join(
                        f"{name} {d} {got[(name, d, 'eniplane')][-1]:.0f} "
                        f"(floor {got[(name, d, 'state-floor')][-1]:.0f})"
                        for d in DIRECTIONS for name in nodes
                        if (name, d, "eniplane") in got and (name, d, "state-floor") in got))
    finally:
        if before is None:
            os.environ.pop("ENIPLANE_BPF_DIR", None)
        else:
            os.environ["ENIPLANE_BPF_DIR"] = before
    res: dict = {}
    for (name, d, scen), v in got.items():
        res.setdefault(d, {}).setdefault(name, {})[scen] = v
    return res


def _med(v: list[float]) -> str:
    return f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})"


def table(res: dict, old: str = "old", new: str = "new") -> str:
    lines = ["| direction | build | eniplane | state floor | gap to the floor | new - old |",
             "|---|---|---|---|---|---|"]
    for d, by in res.items():
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
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    for c in (a.old, a.new):
        if not (c / "bpf" / "eniplane.c").is_file():
            ap.error(f"{c} is not a checkout of eniplane (no bpf/eniplane.c)")
    res = run({"old": a.old / "bpf", "new": a.new / "bpf"}, a.flows, a.rounds, a.seconds,
              a.max_flows, progress=report.progress)
    return report.finish(table(res), res, a.json)


if __name__ == "__main__":
    sys.exit(main())
