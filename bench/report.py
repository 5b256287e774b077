"""Benchmark output: a table for people, JSON for machines, a PNG chart for the docs."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def progress(msg: str) -> None:
    """A tool's progress line: on stderr, so that stdout carries only its table."""
    print(msg, file=sys.stderr, flush=True)


def finish(table: str, res: dict, json_path: Path | None) -> int:
    """How every A/B tool ends: its table on stdout, every round as JSON when asked."""
    print(table)
    if json_path:
        json_path.write_text(json.dumps({str(k): v for k, v in res.items()}, indent=1))
    return 0


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os
    return {"kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version()}


def _pct(x: float | None) -> str:
    return f"{x:.0%}" if x else "-"


PROGRAM_SCENARIOS = ("ceiling", "state-floor", "eniplane", "eniplane-geneve")


def _program_ns(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Per direction and flow count, the node program's ns per packet in each scenario, and
    eniplane's gap to the state floor (issue 16's yardstick: at most 60 ns)."""
    by = {(r["direction"], r["flows"], r["scenario"]): r.get("program_ns") for r in results}
    phase = {(r["direction"], r["flows"]): r.get("memlat_ns") for r in results}
    scen = [s for s in PROGRAM_SCENARIOS if any(k[2] == s and v for k, v in by.items())]
    sizes = next((list(p) for p in phase.values() if p), [])
    rows = []
    for d in ("forward", "return"):
        for n in sorted({r["flows"] for r in results if r["direction"] == d}):
            vals = [by.get((d, n, s)) for s in scen]
            if any(vals):
                floor, eni = by.get((d, n, "state-floor")), by.get((d, n, "eniplane"))
                gap = f"{eni - floor:+.0f}" if floor and eni else "-"
                p = phase.get((d, n)) or {}
                rows.append([d, f"{n:,}"] + [f"{v:.0f}" if v else "-" for v in vals] + [gap] +
                            ([" / ".join(f"{p[m]:.0f}" for m in sizes)] if sizes else []))
    phase_col = [f"host: ns per load over {' / '.join(sizes)} MiB"] if sizes else []
    return ["direction", "flows"] + scen + ["gap to the floor"] + phase_col, rows


GOAL_SHARE = 0.9  # issue 16: eniplane's rate at least 90% of the state floor's


def _budget(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Per direction and flow count, what a packet costs the whole set-up (generator, node and
    sink share a CPU, so ns = 1000 / Mpps) through the state floor and through eniplane, and
    how much more eniplane may take for its rate to stay at GOAL_SHARE of the floor's: the
    floor's ns times (1 / GOAL_SHARE - 1), a ninth of it for 90%."""
    by = {(r["direction"], r["scenario"], r["flows"]): r["mpps"] for r in results}
    rows = []
    for d in ("forward", "return"):
        for n in sorted({r["flows"] for r in results if r["direction"] == d}):
            sf, eni = by.get((d, "state-floor", n)), by.get((d, "eniplane", n))
            if not sf or not eni:
                continue
            f_ns, e_ns = 1000 / sf, 1000 / eni
            allowed = f_ns * (1 / GOAL_SHARE - 1)
            rows.append([d, f"{n:,}", f"{f_ns:.0f}", f"{e_ns:.0f}", f"{e_ns - f_ns:+.0f}",
                         f"{allowed:.0f}", "yes" if e_ns - f_ns <= allowed else "no"])
    return ["direction", "flows", "floor ns per packet", "eniplane ns per packet",
            "eniplane - floor", f"allowed at {GOAL_SHARE:.0%} of the floor's rate",
            "within"], rows


def tables(doc: dict) -> None:
    from eniplane.output import table

    if "throughput" in doc:
        rows = [(r["direction"], r["scenario"], f"{r['flows']:,}", f"{r['mpps']:.2f}",
                 f"{r['min']:.2f}-{r['max']:.2f}") for r in doc["throughput"]["results"]]
        table("throughput (Mpps, median of runs; spread min-max)",
              ["direction", "path", "flows", "Mpps", "spread"], rows)
        table("eniplane vs the ceiling, the state floor (floor) and the Linux stack, same run",
              ["direction", "path", "flows", "Mpps", "/ ceiling", "/ floor", "/ Linux",
               "floor / ceiling"],
              [(r["direction"], r["scenario"], f"{r['flows']:,}", f"{r['eniplane_mpps']:.2f}",
                _pct(r["vs_ceiling"]), _pct(r.get("vs_state_floor")),
                f"{r['vs_linux']:.1f}x" if r["vs_linux"] else "-",
                _pct(r.get("state_floor_vs_ceiling")))
               for r in doc["throughput"]["ratios"]])
        cols, rows = _program_ns(doc["throughput"]["results"])
        if rows:
            table("ns per packet of the node's program (run-time accounting, a pass of its own)",
                  cols, rows)
        cols, rows = _budget(doc["throughput"]["results"])
        if rows:
            table("ns per packet of the whole set-up (1000 / Mpps): what 90% of the floor's rate "
                  "allows", cols, rows)
    if "cost" in doc:
        c = doc["cost"]
        rows = [("empty XDP (floor)", f"{c['floor_ns']:.0f}", "1.0"),
                ("established forward", f"{c['established_fwd_ns']:.0f}",
                 f"{c['ratios_to_floor']['established_fwd']:.1f}"),
                ("return", f"{c['return_ns']:.0f}", f"{c['ratios_to_floor']['return']:.1f}")]
        rows += [(f"new flow, {k} rules", f"{v:.0f}",
                  f"{c['ratios_to_floor'][f'new_flow_{k}_rules']:.1f}")
                 for k, v in c["new_flow_ns"].items()]
        table("per-packet cost in BPF_PROG_TEST_RUN (ns, median)", ["path", "ns", "x floor"],
              rows)
    if "scale" in doc:
        s = doc["scale"]
        table("scale", ["measure", "value"], [
            ("flows filled", f"{s['created']:,} of {s['fill']:,}"),
            ("setup rate (wall, incl. syscalls)", f"{s['setup_rate_wall_per_s']:,.0f}/s"),
            ("established ns: one flow, table empty", f"{s['established_ns_empty']:.0f}"),
            ("established ns: random flows of the full table", f"{s['established_ns_full']:.0f}"),
            ("established ns: one flow, table full", f"{s['established_ns_full_hot']:.0f}"),
            ("bytes per flow, keys+values", s["bytes_per_flow_key_value"]),
            ("bytes per flow, kernel accounting", f"{s['bytes_per_flow_kernel']:.0f}"),
            ("over the limit: admitted / offered",
             f"{s['over_limit']['admitted']:,} / {s['over_limit']['offered']:,}"),
            ("over the limit: ns per new flow (evicting LRU)",
             f"{s['over_limit']['new_flow_ns']:.0f}")])
    if "control" in doc:
        c = doc["control"]
        table("control plane (s, wall clock)", ["operation", "s"], [
            ("function attach, new ENI", f"{c['attach_new_eni_s']:.3f}"),
            ("function attach, reused ENI", f"{c['attach_reused_eni_s']:.3f}"),
            (f"apply {c['apply_enis']:,} ENIs", f"{c['apply_s']:.2f}"),
            ("apply again (no change)", f"{c['apply_noop_s']:.2f}"),
            ("eniplane --help", f"{c['cli_help_s']:.3f}"),
            ("eniplane stats", f"{c['cli_stats_s']:.3f}")])
        if "api_attach" in c:
            a = c["api_attach"]
            table(f"agent API: function attach ({a['reused_eni']['calls']:,} calls each, ms)",
                  ["case", "p50", "p99", "goal (p99)"],
                  [("reused ENI", a["reused_eni"]["p50_ms"], a["reused_eni"]["p99_ms"], "< 20"),
                   ("new ENI", a["new_eni"]["p50_ms"], a["new_eni"]["p99_ms"], "< 100")])


def write_json(doc: dict, path: Path) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")


COLORS = {"ceiling": "#4c72b0", "state-floor": "#8fa8d0", "eniplane": "#dd8452",
          "eniplane-geneve": "#c44e52", "linux": "#55a868"}


def chart(doc: dict, path: Path) -> bool:
    """Throughput bars per flow count and direction; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    res = doc.get("throughput", {}).get("results", [])
    if not res:
        return False
    dirs = [d for d in ("forward", "return") if any(r["direction"] == d for r in res)]
    flows = sorted({r["flows"] for r in res})
    fig, axes = plt.subplots(1, len(dirs), figsize=(5 * len(dirs), 4.0), squeeze=False)
    for ax, d in zip(axes[0], dirs):
        scen = [s for s in ("ceiling", "state-floor", "eniplane", "eniplane-geneve", "linux")
                if any((r["scenario"], r["direction"]) == (s, d) for r in res)]
        w = 0.8 / len(scen)
        for i, s in enumerate(scen):
            vals = [next((r["mpps"] for r in res if (r["direction"], r["scenario"], r["flows"])
                          == (d, s, f)), 0) for f in flows]
            ax.bar([x + i * w for x in range(len(flows))], vals, w, label=s, color=COLORS[s])
        ax.set_xticks([x + w * (len(scen) - 1) / 2 for x in range(len(flows))],
                      [f"{f:,} flows" for f in flows])
        ax.set_ylabel("Mpps")
        ax.set_title(f"{d} path")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(scen),
                  frameon=False)
    m = doc.get("machine", {})
    fig.suptitle(f"eniplane throughput, {m.get('cores')} cores, Linux {m.get('kernel')}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---- docs/performance.md ------------------------------------------------------------------------
def _md(columns: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def markdown_tables(doc: dict) -> dict[str, str]:
    """The figures of one run as the Markdown tables docs/performance.md shows."""
    out: dict[str, str] = {}
    if "throughput" in doc:
        res = doc["throughput"]["results"]
        by = {(r["direction"], r["scenario"], r["flows"]): r["mpps"] for r in res}
        rows = []
        for d in ("forward", "return"):
            for s, label in (("eniplane", "VXLAN" if d == "forward" else ""),
                             ("eniplane-geneve", "GENEVE, one option")):
                for n in sorted({r["flows"] for r in res}):
                    v = by.get((d, s, n))
                    if v is None:
                        continue
                    c, lx = by.get((d, "ceiling", n)), by.get((d, "linux", n))
                    sf = by.get((d, "state-floor", n))
                    rows.append([f"{d} ({label})" if label else d, f"{n:,}", f"{c:.2f}",
                                 f"{sf:.2f}" if sf else "-", f"{v:.2f}", f"{lx:.2f}",
                                 f"{v / c:.0%}", _pct(v / sf if sf else None),
                                 f"{v / lx:.1f}x"])
        rows.sort(key=lambda r: (r[0].split()[0] != "forward", int(r[1].replace(",", "")),
                                 "GENEVE" in r[0]))
        out["throughput"] = _md(["direction", "flows", "ceiling Mpps", "state floor Mpps",
                                 "eniplane Mpps", "Linux Mpps", "eniplane / ceiling",
                                 "eniplane / state floor", "eniplane / Linux"], rows)
        cols, prow = _program_ns(res)
        if prow:
            out["program_ns"] = _md([c.replace("-", " ") for c in cols], prow)
        cols, brow = _budget(res)
        if brow:
            out["budget"] = _md(cols, brow)
    if "cost" in doc:
        c = doc["cost"]
        f = c["floor_ns"]
        rows = [["empty XDP program (floor)", f"{f:.0f}", "1.0"],
                ["established forward (decap, flow lookup, SNAT, redirect)",
                 f"{c['established_fwd_ns']:.0f}", f"{c['established_fwd_ns'] / f:.1f}"],
                ["return (flow lookup, translation, encapsulation, redirect)",
                 f"{c['return_ns']:.0f}", f"{c['return_ns'] / f:.1f}"]]
        for k, v in c["new_flow_ns"].items():
            rows.append([f"new flow, {k} rules", f"{v:.0f}", f"{v / f:.1f}"])
        rates = ", ".join(f"{v / 1e6:.2f} M ({k} rules)"
                          for k, v in c["new_flows_per_s_per_core"].items())
        out["cost"] = _md(["path", "ns", "x floor"], rows) + \
            f"\n\nNew flows per second per core in BPF_PROG_TEST_RUN: {rates}."
    if "scale" in doc:
        s = doc["scale"]
        out["scale"] = _md(["measure", "value"], [
            ["flows filled", f"{s['created']:,} of {s['fill']:,}"],
            ["setup rate from user space (one syscall per flow, wall clock)",
             f"{s['setup_rate_wall_per_s']:,.0f} flows/s"],
            ["established path, one hot flow, empty / full table",
             f"{s['established_ns_empty']:.0f} / {s['established_ns_full_hot']:.0f} ns"],
            ["established path, random flows of the full table (cold caches)",
             f"{s['established_ns_full']:,.0f} ns"],
            ["memory per flow, key + value (one entry, both directions; a quarter of a flow_hot "
             "slot)",
             f"{s['bytes_per_flow_key_value']} B"],
            ["memory per flow, what the kernel charges (memlock / max_entries)",
             f"{s['bytes_per_flow_kernel']:.0f} B"],
            ["past the limit (LRU evicts the least recently used flow, whole)",
             f"{s['over_limit']['admitted']:,} of {s['over_limit']['offered']:,} new flows "
             f"admitted, {s['over_limit']['dropped']:,} dropped, "
             f"{s['over_limit']['new_flow_ns']:,.0f} ns each (evicting; walks go past empty "
             "ports, as deep as flows sit)"]])
    if "control" in doc:
        c = doc["control"]
        out["control"] = _md(["operation", "s"], [
            ["`function attach`, new ENI (store, reconcile, maps)", f"{c['attach_new_eni_s']:.2f}"],
            ["`function attach`, reused ENI", f"{c['attach_reused_eni_s']:.2f}"],
            [f"`apply` of {c['apply_enis']:,} ENIs (node up)", f"{c['apply_s']:.2f}"],
            ["the same `apply` again (no change)", f"{c['apply_noop_s']:.2f}"],
            ["`eniplane --help` cold start", f"{c['cli_help_s']:.2f}"],
            ["`eniplane stats` cold start (no compiler)", f"{c['cli_stats_s']:.2f}"]])
    return out


def update_doc(path: Path, doc: dict) -> list[str]:
    """Replace every `<!-- bench:NAME -->...<!-- /bench:NAME -->` block with this run's table."""
    import re

    text = path.read_text()
    done = []
    for name, table_md in markdown_tables(doc).items():
        # the block may be empty, as a new one is before its first run
        pat = re.compile(rf"(<!-- bench:{name} -->\n)(?:.*?\n)?(<!-- /bench:{name} -->)", re.S)
        text, n = pat.subn(lambda m: m.group(1) + table_md + "\n" + m.group(2), text)
        if n:
            done.append(name)
    path.write_text(text)
    return done


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.report RESULTS.json docs/performance.md")
    print("updated:", ", ".join(update_doc(Path(sys.argv[2]), json.loads(Path(sys.argv[1]).read_text()))))
