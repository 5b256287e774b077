"""python -m bench [throughput|cost|scale|control|all|lifecycle|ipv4] [--smoke] [--json FILE] [--png FILE]

`lifecycle` (not part of `all`) times the flow lifecycle: with --old CHECKOUT it compares that
checkout's datapath with this one's, in interleaved rounds. `ipv4` (not part of `all`) times each
IPv4 path (fragments, the node's ICMP, ICMP errors) beside the established path."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from eniplane.loader import DEFAULT_MAX_FLOWS

from . import report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("what", nargs="*", metavar="STEP",
                    help="all (default), throughput, cost, scale or control; lifecycle, ipv4")
    ap.add_argument("--smoke", action="store_true",
                    help="a few thousand packets per step: proves the harness works, not speed")
    ap.add_argument("--seconds", type=float, default=2.0, help="length of one measured run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--flows", default="1,1000,65536", help="flow counts, comma separated")
    ap.add_argument("--max-flows", type=int, default=DEFAULT_MAX_FLOWS,
                    help="flow table entries for the throughput step (eniplane and the state "
                         "floor alike; default: eniplane up's)")
    ap.add_argument("--fill", type=int, default=1_000_000, help="flows for the scale step")
    ap.add_argument("--enis", type=int, default=10_000, help="ENIs for the apply step")
    ap.add_argument("--api-calls", type=int, default=1000,
                    help="control: attaches through the agent's API, per case")
    ap.add_argument("--generator", choices=["auto", "xdp", "pktgen"], default="auto",
                    help="auto: pktgen where the kernel has it, XDP live frames otherwise")
    ap.add_argument("--old", type=Path, metavar="CHECKOUT",
                    help="lifecycle: a checkout of an earlier eniplane to compare with "
                         "(git worktree add /tmp/old095 095c6ad)")
    ap.add_argument("--rounds", type=int, default=7, help="lifecycle: interleaved rounds")
    ap.add_argument("--sweep-flows", type=int, default=100_000,
                    help="lifecycle: flows the sweep is timed over")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--png", type=Path, help="write the throughput chart here")
    ap.add_argument("--update-doc", type=Path, metavar="MD",
                    help="rewrite the <!-- bench:... --> tables of this Markdown file")
    a = ap.parse_args(argv)
    from eniplane.signals import exit_on_sigterm

    exit_on_sigterm()  # a killed run still removes its namespaces and pins
    bad = set(a.what) - {"all", "throughput", "cost", "scale", "control", "lifecycle", "ipv4"}
    if bad:
        ap.error(f"unknown step {sorted(bad)[0]!r}")
    what = {"throughput", "cost", "scale", "control"} if not a.what or "all" in a.what \
        else set(a.what)
    what |= {w for w in ("lifecycle", "ipv4") if w in a.what}
    if a.smoke:
        # the fill passes an ENI's default flow limit (65,000): the scale step must lift it
        a.seconds, a.repeats, a.flows, a.fill, a.enis = 0.05, 1, "1,16", 66_000, 20
    flows = [int(x) for x in a.flows.split(",")]
    n = 300 if a.smoke else 20_000

    def progress(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    doc: dict = {"machine": report.machine(), "smoke": a.smoke,
                 "setup": "single core: generator, node and sink share CPU0"}
    if "throughput" in what:
        from . import throughput
        from .gen import have_pktgen
        backend = a.generator if a.generator != "auto" else ("pktgen" if have_pktgen() else "xdp")
        if backend == "pktgen" and not have_pktgen():
            ap.error("--generator pktgen: this kernel has no pktgen (/proc/net/pktgen)")
        progress(f"generator: {backend}")
        if a.max_flows < max(flows):
            ap.error(f"--max-flows {a.max_flows} cannot hold {max(flows)} flows")
        res = throughput.run(flows, a.seconds, a.repeats, progress, backend, a.max_flows)
        doc["throughput"] = {"results": res, "ratios": throughput.ratios(res),
                             "seconds": a.seconds, "repeats": a.repeats,
                             "max_flows": a.max_flows}
    if "cost" in what:
        from . import cost
        doc["cost"] = cost.run(n, progress=progress)
    if "scale" in what:
        from . import cost
        doc["scale"] = cost.scale(a.fill, probe=n, progress=progress)
    if "control" in what:
        from . import control
        doc["control"] = control.run(a.enis, repeats=1 if a.smoke else 5, progress=progress,
                                     api_calls=20 if a.smoke else a.api_calls)
    if "lifecycle" in what:
        from . import lifecycle
        batch = 300 if a.smoke else 3000
        doc["lifecycle"] = lifecycle.run(a.old, 5000 if a.smoke else a.sweep_flows,
                                         1 if a.smoke else a.rounds, batch, progress)
        print(json.dumps(doc["lifecycle"], indent=1, default=str))
    if "ipv4" in what:
        from . import ipv4
        doc["ipv4"] = ipv4.run(1 if a.smoke else a.rounds, 300 if a.smoke else 3000, progress)
        print(json.dumps(doc["ipv4"], indent=1))
    report.tables(doc)
    if a.json:
        report.write_json(doc, a.json)
        progress(f"wrote {a.json}")
    if a.png:
        progress(f"wrote {a.png}" if report.chart(doc, a.png) else "no chart: matplotlib missing")
    if a.update_doc:
        progress(f"updated {', '.join(report.update_doc(a.update_doc, doc))} in {a.update_doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
