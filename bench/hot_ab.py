"""flow_hot on and off, in one run: what the short way is worth, per flow count and direction.

Contract: `python -m bench.hot_ab [--flows 1,16384,65536] [--rounds 5] [--seconds 1] [--json F]
[--in-order]` stages the benchmark topology once (sinks on both far ends, as the bench has them),
opens the flows once per flow count (forward, in a shuffled order: throughput.open_flows), and
then, in interleaved rounds whose order alternates, times eniplane's program per packet with the
kernel's run-time accounting (run_time_ns / run_cnt, BPF_ENABLE_STATS on for the whole run),
forward (xdp_fabric) and return (xdp_vpc), with flow_hot on and with it off (NODE_F_NO_HOT:
every packet goes the long way, through `flows`, as before flow_hot existed), and the state
floor beside them. Same build, same maps, same packets: the one difference is the short way.
Before the rounds the flows are sent forward for `seconds` and counted: how many have a slot
their next packet may take (Datapath.flow_summary's short_way, the metric
eniplane_flows_short_way), since a flow without one goes the long way with flow_hot on too.
(Turning flow_hot off and on stops every slot, and flows then take them back in another order:
count before, as the bench's runs meet them.)
It prints medians (min-max) and writes every round with --json; `make bench` does not run it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path


from . import report
from . import throughput as TP
from . import topo as T
from .gen import pin_cpu0, rfc4814_ports


def run(flow_counts: list[int], rounds: int, seconds: float, max_flows: int,
        progress=print, in_order: bool = False) -> dict:
    pin_cpu0()
    res: dict = {}
    with TP.staged_for_timing(max_flows) as (t, dp):
        for n in flow_counts:
            ports = rfc4814_ports(n)
            dp.set_hot(True)
            dp.flush_flows()
            made = [TP._generator("xdp", t, "forward", ports)]
            try:
                t.use("eniplane", "forward")
                if in_order:  # the bench's way before open_flows: a stream for `flows`
                    made[0].run(0, max_packets=max(2 * n, 1000))
                else:
                    TP.open_flows(t, "xdp", ports)
                made.append(TP._generator("xdp", t, "return",
                                          TP.reply_ports(t, "eniplane", ports, dp)))
                made.append(TP._generator("xdp", t, "return",
                                          TP.reply_ports(t, "linux", ports)))
                gens = {"forward": made[0], "return": made[1]}
                floor_gens = {"forward": made[0], "return": made[2]}
                # the slots as the bench's runs meet them: opened, then sent for a while (a
                # flow without a slot tries to make room on each of its packets)
                t.use("eniplane", "forward")
                gens["forward"].run(seconds)
                summary = dp.flow_summary()
                slots = {"flows": summary["entries"], "with_slot": summary["short_way"]}
                got: dict[str, list[float]] = {}
                for direction in ("forward", "return"):
                    cases = ["hot on", "hot off", "state floor"]
                    for r in range(-1, rounds):  # round -1 warms both ways
                        order = cases[r % 3:] + cases[:r % 3] if r >= 0 else cases
                        for c in order:
                            if c == "state floor":
                                t.use("state-floor", direction)
                                fd, gen = t.node_prog_fd("state-floor", direction), \
                                    floor_gens[direction]
                            else:
                                dp.set_hot(c == "hot on")
                                t.use("eniplane", direction)
                                fd, gen = t.node_prog_fd("eniplane", direction), \
                                    gens[direction]
                            runs, ns = TP.program_runs(
                                fd, lambda: gen.run(seconds if r >= 0 else 0.3))
                            if r >= 0 and runs > 0:
                                got.setdefault(f"{direction} {c}", []).append(ns)
                        if r >= 0:
                            progress(f"{n} flows, {direction}, round {r + 1}/{rounds}: " +
                                     ", ".join(f"{c} {got[f'{direction} {c}'][-1]:.0f}"
                                               for c in cases if f"{direction} {c}" in got))
                dp.set_hot(True)
                res[n] = {c: {"ns": statistics.median(v), "min": min(v), "max": max(v),
                              "runs": v} for c, v in got.items()}
                res[n]["slots"] = slots
            finally:
                for g in made:
                    g.close()
    return res


def table(res: dict) -> str:
    lines = ["| flows | direction | state floor | hot off (the long way) | hot on | on - off | "
             "on - floor |", "|---|---|---|---|---|---|---|"]
    for n, cases in res.items():
        for d in ("forward", "return"):
            f, off, on = (cases.get(f"{d} {c}") for c in ("state floor", "hot off", "hot on"))
            if not (f and off and on):
                continue
            cell = [f"{x['ns']:.0f} ({x['min']:.0f}-{x['max']:.0f})" for x in (f, off, on)]
            lines.append(f"| {n:,} | {d} | " + " | ".join(cell) +
                         f" | {on['ns'] - off['ns']:+.0f} | {on['ns'] - f['ns']:+.0f} |")
    lines += ["", "| flows | entries | with a slot their next packet may take |", "|---|---|---|"]
    for n, cases in res.items():
        sl = cases.get("slots")
        if sl:
            share = sl["with_slot"] / sl["flows"] if sl["flows"] else 0.0
            lines.append(f"| {n:,} | {sl['flows']:,} | {sl['with_slot']:,} ({share:.1%}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hot_ab", description=__doc__)
    ap.add_argument("--flows", default="1,16384,65536")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--max-flows", type=int, default=T.DEFAULT_MAX_FLOWS)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--in-order", action="store_true",
                    help="open the flows in the order the rounds send them in (not open_flows' "
                         "shuffled order), which lays `flows` entries out as a stream")
    a = ap.parse_args(argv)
    res = run([int(x) for x in a.flows.split(",")], a.rounds, a.seconds, a.max_flows,
              progress=report.progress, in_order=a.in_order)
    return report.finish(table(res), res, a.json)


if __name__ == "__main__":
    sys.exit(main())
