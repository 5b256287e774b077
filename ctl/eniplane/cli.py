"""The `eniplane` command line.

Contract: noun-verb groups; `-o json` puts a stable document on stdout, tables are for people;
messages and errors go to stderr. Exit codes: 0 ok, 1 operational error, 2 usage error. Domain
errors (EniplaneError) become one line and an exit code here, at the boundary, and nowhere else.
Heavy modules (bcc, pyroute2, rich) are imported inside the commands that need them, so that
`--help` and `stats` start fast; only `up` and `upgrade` compile C.
"""

from __future__ import annotations

import enum
import inspect
import re
import sys
from typing import Optional

import typer
from typer.core import TyperCommand, TyperGroup

from . import loader, output, params
from .errors import EniplaneError
from .output import Format

NODE_OPT = typer.Option("default", "--node", "-n", envvar="ENIPLANE_NODE",
                        help="Node name: several nodes can share one machine.")
OUT_OPT = typer.Option(Format.table, "--output", "-o", help="table for people, json for scripts.")


class _PlainHelp:
    """Help shows what a user types. Typer 0.2x prints a flag's type (`<bool>`, even for --help)
    and braces round required arguments in the usage line (`{ID}`); neither is ever typed. And a
    group's list of commands shows each one's first paragraph as one line: Typer keeps the
    docstring's line breaks there, which cut its sentences at the source's margin."""

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        if self.help and not self.short_help:  # type: ignore[attr-defined]
            first = inspect.cleandoc(self.help).partition("\n\n")[0]  # type: ignore[attr-defined]
            self.short_help = " ".join(first.split())

    def get_params(self, ctx):  # type: ignore[no-untyped-def]
        params = super().get_params(ctx)  # type: ignore[misc]
        for p in params:
            if getattr(p, "is_flag", False) and p.metavar is None:
                p.metavar = ""  # a flag takes no value: nothing to show in the type column
        return params

    def collect_usage_pieces(self, ctx):  # type: ignore[no-untyped-def]
        pieces = super().collect_usage_pieces(ctx)  # type: ignore[misc]
        return [re.sub(r"\{([^{}]*)\}", r"\1", p) for p in pieces]


class _Command(_PlainHelp, TyperCommand):
    pass


class _SubGroup(_PlainHelp, TyperGroup):
    pass


class _Group(_SubGroup):
    def invoke(self, ctx):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except EniplaneError as e:
            for line in str(e).splitlines():  # several problems (apply -f) are several lines
                sys.stderr.write(f"eniplane: error: {line}\n")
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("eniplane: interrupted\n")
            raise typer.Exit(130) from None


app = typer.Typer(cls=_Group, no_args_is_help=True, add_completion=False,
                  help="eniplane: shared-ENI network function (XDP datapath, Python control plane).")
lab_app = typer.Typer(cls=_SubGroup, no_args_is_help=True, help="The namespace lab.")
maps_app = typer.Typer(cls=_SubGroup, no_args_is_help=True, help="Inspect the pinned maps.")
vpc_app = typer.Typer(cls=_SubGroup, no_args_is_help=True, help="Customer VPCs attached to the node.")
subnet_app = typer.Typer(cls=_SubGroup, no_args_is_help=True, help="Subnets of the VPCs.")
sg_app = typer.Typer(cls=_SubGroup, no_args_is_help=True, help="Security groups.")
rule_app = typer.Typer(cls=_SubGroup, no_args_is_help=True, help="Security-group rules.")
worker_app = typer.Typer(cls=_SubGroup, no_args_is_help=True, help="Worker hosts allowed to tunnel.")
function_app = typer.Typer(cls=_SubGroup, no_args_is_help=True, help="Functions and their ENIs.")
eni_app = typer.Typer(cls=_SubGroup, no_args_is_help=True, help="Shared ENIs (derived).")
flows_app = typer.Typer(cls=_SubGroup, invoke_without_command=True, help="Flows in the datapath.")
timeouts_app = typer.Typer(cls=_SubGroup, no_args_is_help=True,
                           help="Idle timeouts of flows (node-wide).")
limits_app = typer.Typer(cls=_SubGroup, no_args_is_help=True,
                         help="Flow limits (node-wide default per ENI).")
app.add_typer(lab_app, name="lab")
app.add_typer(maps_app, name="maps")
app.add_typer(vpc_app, name="vpc")
app.add_typer(subnet_app, name="subnet")
app.add_typer(sg_app, name="sg")
sg_app.add_typer(rule_app, name="rule")
app.add_typer(worker_app, name="worker")
app.add_typer(function_app, name="function")
app.add_typer(eni_app, name="eni")
app.add_typer(flows_app, name="flows")
app.add_typer(timeouts_app, name="timeouts")
app.add_typer(limits_app, name="limits")
ipv4_app = typer.Typer(cls=_SubGroup, no_args_is_help=True,
                       help="IPv4 settings (node-wide): MSS clamping, the ICMP the node sends.")
app.add_typer(ipv4_app, name="ipv4")
events_app = typer.Typer(cls=_SubGroup, no_args_is_help=True,
                         help="Datapath events (node-wide): sampled drops and new flows for `monitor`.")
app.add_typer(events_app, name="events")


# ---- node life cycle ----------------------------------------------------------------------
@app.command()
def up(fabric_if: str = typer.Option(..., "--fabric-if", "-f", help="Interface facing the workers."),
       fabric_ip: str = typer.Option(..., "--fabric-ip", "-a", callback=params.ipv4,
                                     help="The node's tunnel address."),
       netns: Optional[str] = typer.Option(None, "--netns", "-N", help="Namespace of the node."),
       mode: str = typer.Option("auto", "--mode", "-m",
                                help="XDP mode: auto (native, else generic), native, generic."),
       max_flows: int = typer.Option(loader.DEFAULT_MAX_FLOWS, "--max-flows", help="Flow table size per direction."),
       node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Compile and load the datapath, pin it and attach it to the fabric interface; the store
    keeps these parameters (`eniplane agent` brings the node up with them)."""
    from . import ops

    if mode not in ("auto", "native", "generic"):
        raise typer.BadParameter("must be auto, native or generic", param_hint="--mode")
    rec, rep = ops.up(node, fabric_if, fabric_ip, netns, mode, max_flows)
    mode_used = rec.interfaces[fabric_if]["mode"]
    _report(rep)
    if mode_used == "generic":
        output.info(f"warning: {fabric_if} has no native XDP; running in generic (skb) mode")
    data = {"node": node, "netns": netns, "fabric_if": fabric_if, "fabric_ip": fabric_ip,
            "mode": mode_used}
    output.emit(out, data, lambda d: output.info(
        f"node {node} is up: xdp_fabric on {fabric_if} ({mode_used})"
        + (f" in namespace {netns}" if netns else "")))


@app.command()
def down(keep_maps: bool = typer.Option(False, "--keep-maps",
                                        help="Keep the pinned maps (flows survive a reload)."),
         node: str = NODE_OPT) -> None:
    """Detach the programs and remove the node's pins (found from the pins if its record is lost)."""
    from . import node as nodemod

    rep = nodemod.down(node, keep_maps)
    detached = ", ".join(rep.detached) or "no interface"
    if rep.had_record:
        output.info(f"node {node} is down (detached from {detached})")
        return
    output.info(f"node {node} had no record (state directory lost?); from its pins: detached "
                f"from {detached}" + (f", removed {rep.removed}" if rep.removed else ""))
    for note in rep.notes:
        output.info(f"note: {note}")


@app.command()
def upgrade(force: bool = typer.Option(False, "--force",
                                       help="Reload even when the current build already runs."),
            node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Swap the running programs for the current build without a lost packet: the new ones are
    loaded and verified first, the maps (flows, counters) are kept. Refuses, changing nothing,
    when a pinned map's layout differs."""
    from . import upgrade as upgrademod

    rep = upgrademod.upgrade(node, force)

    def render(d: dict) -> None:
        new = (d["build"]["new"] or "?")[:12]
        if not d["changed"]:
            output.info(f"node {node} already runs build {new}: nothing to do")
        else:
            output.info(f"node {node} upgraded: build {(d['build']['old'] or 'unrecorded')[:12]}"
                        f" -> {new}")
            output.table("interfaces", ["interface", "program", "mode", "old id", "new id"],
                         [(i["ifname"], i["program"], i["mode"], i["old_id"], i["new_id"])
                          for i in d["interfaces"]])
            if d["maps_added"]:
                output.info(f"maps added: {', '.join(d['maps_added'])}")
        for note in d["notes"]:
            output.info(f"note: {note}")

    output.emit(out, rep, render)


@app.command()
def status(node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Programs, hook, mode, MTU and MSS clamp per interface, the IPv4 settings in force, each
    map's fill level, and warnings: what would drop packets silently, each with its fix."""
    from . import node as nodemod

    st = nodemod.status(node)

    def render(d: dict) -> None:
        output.info(f"node {d['node']}  namespace {d['netns'] or '-'}  fabric {d['fabric_if']} "
                    f"{d['fabric_ip']}")
        b = d["build"]
        output.info(f"build {(b['running'] or 'unrecorded')[:12]}" + (
            " (current)" if b["up_to_date"] else
            f" (bpf/ builds {(b['current'] or '?')[:12]}: eniplane upgrade)"))
        output.table("interfaces", ["interface", "program", "hook", "mode", "prog id", "attached",
                                    "mtu", "mss clamp"],
                     [(i["ifname"], i["program"], i["hook"], i["mode"], i["prog_id"],
                       "yes" if i["attached"] else "NO", i.get("mtu") or "-",
                       i.get("mss_clamp") or "-") for i in d["interfaces"]])
        v4 = d["ipv4"]
        output.table("IPv4 settings", ["mss clamp", "icmp rate / s / CPU",
                                       "tunnel gateway"],
                     [(_ipv4_value("mss_clamp", v4["mss_clamp"]),
                       v4["icmp_rate"] or "0 (sends none)", v4["tunnel_gateway"])])
        output.table("maps", ["map", "type", "entries", "max", "fill"],
                     [(m["name"], m["type"], m["entries"], m["max_entries"],
                       f"{m['fill'] * 100:.1f}%") for m in d["maps"]])
        if d["warnings"]:
            output.table(f"{len(d['warnings'])} warnings: what would drop packets silently",
                         ["subject", "problem", "fix"],
                         [(w["subject"], w["problem"], w["fix"]) for w in d["warnings"]])
        else:
            output.info("no warnings")

    output.emit(out, st, render)


@app.command()
def stats(node: str = NODE_OPT, out: Format = OUT_OPT,
          eni: Optional[str] = typer.Option(None, "--eni", "-e", help="One ENI's counters."),
          nonzero: bool = typer.Option(False, "--nonzero", "-z", help="Hide counters at zero."),
          watch: bool = typer.Option(False, "--watch", "-w",
                                     help="Refresh a table of rates per second in place until "
                                          "Ctrl-C (-o json: one JSON line per interval)."),
          interval: float = typer.Option(1.0, "--interval", "-i", min=0.1, metavar="S",
                                         help="Seconds between refreshes with --watch.")) -> None:
    """Every datapath counter by name, summed over CPUs, and live flows by state (or one ENI's
    counters)."""
    from . import ops

    if watch:
        return _stats_watch(node, eni, out, interval)
    data = ops.stats(node, eni, nonzero)

    def render(d: dict) -> None:
        rows = [(k, f"{v:,}") for k, v in d["counters"].items()]
        output.table(f"node {node} counters" + (f", ENI {eni}" if eni else ""),
                     ["counter", "value"], rows)
        if "flow_states" in d:  # live flows by state, and entries kept that are not live
            output.table("flow entries by state", ["state", "flows"],
                         [(k, f"{v:,}") for k, v in d["flow_states"].items()])

    output.emit(out, data, render)


def _stats_watch(node: str, eni: Optional[str], out: Format, interval: float) -> None:
    """Rates of the counters that moved, refreshed in place (rich's Live) or as JSON lines."""
    import json
    import signal
    import time

    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from .datapath import Datapath

    vni = _state(node).eni(eni).vni if eni else None
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda n, f: stop.append(n))

    with Datapath(node) as dp:
        def read() -> dict[str, int]:
            if vni is not None:
                return dp.eni_stats(vni).get(vni) or {}
            return {**dp.stats(), "redirect_failed_total": sum(dp.redirect_failures().values())}

        def table(rates: dict[str, float], totals: dict[str, int], secs: float) -> Table:
            t = Table(title=f"node {node}" + (f", ENI {eni}" if eni else "") +
                      f": rates over {secs:.1f} s (Ctrl-C ends)", title_justify="left",
                      header_style="bold")
            for c in ("counter", "per second", "total"):
                t.add_column(c, justify="left" if c == "counter" else "right")
            for k, v in rates.items():
                t.add_row(k, f"{v:,.1f}", f"{totals[k]:,}")
            return t

        prev, t0 = read(), time.monotonic()
        live = Live(table({}, prev, 0.0), console=Console(highlight=False), auto_refresh=False) \
            if out == Format.table else None
        if live:
            live.start()
        try:
            while not stop:
                deadline = time.monotonic() + interval
                while not stop and time.monotonic() < deadline:
                    time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
                now, cur = time.monotonic(), read()
                secs = now - t0
                rates = {k: (v - prev.get(k, 0)) / secs for k, v in cur.items()
                         if v != prev.get(k, 0)}
                if live:
                    live.update(table(rates, cur, secs), refresh=True)
                else:
                    sys.stdout.write(json.dumps({"node": node, "eni": eni, "seconds": round(secs, 3),
                                                 "rates": rates}) + "\n")
                    sys.stdout.flush()
                prev, t0 = cur, now
        finally:
            if live:
                live.stop()


# ---- monitor ------------------------------------------------------------------------------
@app.command("monitor")
def monitor(node: str = NODE_OPT, out: Format = OUT_OPT,
            drops: bool = typer.Option(False, "--drops", "-d", help="Drop events only."),
            eni: Optional[str] = typer.Option(None, "--eni", "-e", metavar="ID",
                                              help="Events of one ENI only."),
            count: int = typer.Option(0, "--count", "-c", min=0, metavar="N",
                                      help="End after N events (0: until Ctrl-C).")) -> None:
    """The datapath's events as they happen, like `cilium monitor`: sampled drops (reason,
    worker, VNI, addresses) and new flows when `events set --flows on`. One line per event,
    or one JSON object per line with -o json. Ctrl-C or SIGTERM ends it."""
    import json
    import signal

    from . import events as ev_mod
    from . import paths, ringbuf
    from .datapath import Datapath

    st = _state(node)
    by_vni = {e.vni: e.id for e in st.enis.values()}
    want = st.eni(eni) if eni else None
    with Datapath(node) as dp:
        layout, reasons = dp.event_layout(), dp.event_reasons()
    stop: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda n, f: stop.append(n))

    def matches(ev: dict) -> bool:
        if drops and ev["kind"] != "drop":
            return False
        if want is None:
            return True
        if "vni" in ev:
            return ev["vni"] == want.vni
        return want.address in (ev.get("src"), ev.get("dst"))  # the VPC side, a new flow

    shown = 0
    with ringbuf.open_pinned(str(paths.maps_dir(node) / "events")) as rb:
        if out == Format.table:
            output.info(f"listening for events of node {node}; Ctrl-C ends")
        while not stop and (not count or shown < count):
            if not rb.wait(0.2):
                continue
            for raw in rb.drain():
                e = ev_mod.decode(raw, layout, reasons)
                if "vni" in e and e["vni"] in by_vni:
                    e["eni"] = by_vni[e["vni"]]
                if not matches(e):
                    continue
                sys.stdout.write((json.dumps(e) if out == Format.json else ev_mod.summary(e))
                                 + "\n")
                shown += 1
                if count and shown >= count:
                    break
            sys.stdout.flush()


# ---- maps ---------------------------------------------------------------------------------
@maps_app.command("list")
def maps_list(node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Every pinned map with its type, sizes and fill."""
    from . import paths
    from .datapath import MAP_NAMES
    from .maps import PinnedMap

    rows = []
    for name in MAP_NAMES:
        with PinnedMap(str(paths.maps_dir(node) / name)) as m:
            rows.append({"name": name, "type": m.type_name, "id": m.id, "key_size": m.key_size,
                         "value_size": m.value_size, "max_entries": m.max_entries,
                         "entries": m.count(), "path": m.path})
    output.emit(out, rows, lambda d: output.table(
        None, ["map", "type", "id", "key B", "value B", "entries", "max"],
        [(r["name"], r["type"], r["id"], r["key_size"], r["value_size"], r["entries"],
          r["max_entries"]) for r in d]))


@maps_app.command("dump")
def maps_dump(name: str = typer.Argument(..., help="Map name, as in `maps list`."),
              limit: int = typer.Option(1000, "--limit", "-l", help="At most this many entries."),
              percpu: bool = typer.Option(False, "--per-cpu", help="Show per-CPU values unsummed."),
              node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Decoded entries of one map (layouts from the map's BTF)."""
    import json

    from . import paths
    from .datapath import MAP_NAMES
    from .errors import UsageError
    from .maps import PinnedMap, sum_percpu

    if name not in MAP_NAMES:
        raise UsageError(f"no map named {name!r} (maps: {', '.join(MAP_NAMES)})")
    with PinnedMap(str(paths.maps_dir(node) / name)) as m:
        entries = [{"key": k, "value": v if (percpu or not m.percpu) else sum_percpu(v)}
                   for k, v in m.items(limit)]
    output.emit(out, entries, lambda d: output.table(
        f"{name} ({len(d)} entries)", ["key", "value"],
        [(json.dumps(e["key"]), json.dumps(e["value"])) for e in d]))


# ---- lab ----------------------------------------------------------------------------------
@lab_app.command("up")
def lab_up(name: Optional[str] = typer.Option(None, "--name", help="Prefix (default: random)."),
           out: Format = OUT_OPT) -> None:
    """Build the namespace lab: node, fabric, two workers, two VPCs on 10.0.0.0/16."""
    from .lab import Lab

    lab = Lab.create(name)
    data = {"name": lab.prefix, "namespaces": lab.namespaces, "fabric_if": lab.fabric_if,
            "fabric_ip": lab.fabric_ip}
    output.emit(out, data, lambda d: output.info(
        f"lab {d['name']} is up: " + ", ".join(f"{k}={v}" for k, v in d["namespaces"].items())
        + f"\nnext: eniplane up --netns {d['namespaces']['node']} --fabric-if {d['fabric_if']}"
          f" --fabric-ip {d['fabric_ip']}"))


@lab_app.command("down")
def lab_down(name: Optional[str] = typer.Argument(None, metavar="NAME", help="The lab to remove."),
             all_labs: bool = typer.Option(False, "--all", help="Remove every lab on this machine.")
             ) -> None:
    """Remove a lab's namespaces and processes (NAME, or every lab with --all)."""
    from .errors import UsageError
    from .lab import Lab

    if name and all_labs:
        raise UsageError("give a lab name or --all, not both")
    if not name and not all_labs:  # labs may be other users': removing them all is asked for
        raise UsageError(f"give a lab name or --all (labs: {', '.join(Lab.all()) or 'none'})")
    for n in [name] if name else Lab.all():
        Lab.load(n).destroy()
        output.info(f"lab {n} removed")


@lab_app.command("list")
def lab_list(out: Format = OUT_OPT) -> None:
    """Labs that exist on this machine."""
    from .lab import Lab

    labs = [{"name": n, "namespaces": Lab.load(n).namespaces} for n in Lab.all()]
    output.emit(out, labs, lambda d: output.table(
        None, ["lab", "namespaces"], [(x["name"], " ".join(x["namespaces"].values())) for x in d]))


# ---- control plane ------------------------------------------------------------------------
def _state(node: str):
    """The stored desired state, for commands that only read it (creates nothing)."""
    from .store import Store

    return Store.peek(node)


def _report(rep) -> None:
    for w in rep.warnings:
        output.info(f"warning: {w}")


def _change(node: str, mutate, done: str) -> object:
    from .reconcile import change

    result, rep = change(node, mutate)
    _done(node, rep, done)
    return result


def _done(node: str, rep, done: str) -> None:
    """What a change did, on stderr: its warnings, then `done` (or that it is only stored)."""
    _report(rep)
    output.info(done if rep.node_up else
                f"{done} (stored; node {node} is not up: `eniplane up` applies it)")


@vpc_app.command("add")
def vpc_add(vpc_id: str = typer.Argument(..., metavar="ID"),
            cidr: str = typer.Option(..., "--cidr", "-c", callback=params.cidr,
                                     help="The VPC's CIDR."),
            iface: str = typer.Option(..., "--iface", "-i", help="Node interface into the VPC."),
            gateway: str = typer.Option(..., "--gateway", "-g", callback=params.ipv4,
                                        help="The VPC gateway's address."),
            gateway_mac: Optional[str] = typer.Option(
                None, "--gateway-mac", "-G", callback=params.mac,
                help="Pin the gateway's MAC (default: learned from its first ARP, then kept)."),
            node: str = NODE_OPT) -> None:
    """Attach a VPC through one of the node's interfaces."""
    _change(node, lambda st: st.add_vpc(vpc_id, cidr, iface, gateway, gateway_mac),
            f"VPC {vpc_id} added")


@vpc_app.command("relearn")
def vpc_relearn(vpc_id: str = typer.Argument(..., metavar="ID"), node: str = NODE_OPT,
                out: Format = OUT_OPT) -> None:
    """Adopt the next MAC the VPC's gateway answers ARP from (after it really changed)."""
    from . import arp
    from . import node as nodemod
    from .datapath import Datapath

    v = _state(node).vpc(vpc_id)
    if v.gateway_mac:
        from .errors import UsageError
        raise UsageError(f"VPC {vpc_id} has a static gateway MAC ({v.gateway_mac}); change it "
                         f"with `vpc del` and `vpc add --gateway-mac`, or apply -f")
    rec = nodemod.NodeRecord.load(node)
    with Datapath(node, rec.netns) as dp:
        old = (dp.gateway(v.idx) or {}).get("mac")
        dp.relearn_gateway(v.idx)
        info = nodemod.attach_vpc_if(node, v.iface)
        mac = arp.resolve_gateway(dp, rec.netns, v.iface, v.idx, info["mac"], v.gateway)
    data = {"vpc": vpc_id, "gateway": v.gateway, "old_mac": old, "mac": mac}
    output.emit(out, data, lambda d: output.info(
        f"VPC {vpc_id}: gateway {d['gateway']} is at {d['mac']} (was {d['old_mac'] or 'unknown'})"))


@vpc_app.command("list")
def vpc_list(node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """VPCs with their interface and gateway."""
    from . import node as nodemod

    st = _state(node)
    gws: dict[int, dict] = {}
    if nodemod.is_up(node):
        from .datapath import Datapath

        with Datapath(node) as dp:
            gws = {v.idx: dp.gateway(v.idx) or {} for v in st.vpcs.values()}
    rows = [{"id": v.id, "cidr": v.cidr, "iface": v.iface, "gateway": v.gateway, "idx": v.idx,
             "gateway_mac": gws.get(v.idx, {}).get("mac") or v.gateway_mac,
             "gateway_mac_source": gws.get(v.idx, {}).get("mac_source")
             or ("static" if v.gateway_mac else None),
             "subnets": sorted(s.id for s in st.subnets.values() if s.vpc == v.id)}
            for v in sorted(st.vpcs.values(), key=lambda v: v.id)]
    output.emit(out, rows, lambda d: output.table(
        None, ["vpc", "cidr", "interface", "gateway", "gateway MAC", "subnets"],
        [(r["id"], r["cidr"], r["iface"], r["gateway"],
          f"{r['gateway_mac']} ({r['gateway_mac_source']})" if r["gateway_mac"] else "-",
          " ".join(r["subnets"])) for r in d]))


@vpc_app.command("del")
def vpc_del(vpc_id: str = typer.Argument(..., metavar="ID"), node: str = NODE_OPT) -> None:
    """Detach a VPC that no subnet or group uses any more."""
    _change(node, lambda st: st.del_vpc(vpc_id), f"VPC {vpc_id} deleted")


@subnet_app.command("add")
def subnet_add(subnet_id: str = typer.Argument(..., metavar="ID"),
               vpc: str = typer.Option(..., "--vpc", "-v"),
               cidr: str = typer.Option(..., "--cidr", "-c", callback=params.cidr),
               node: str = NODE_OPT) -> None:
    """Add a subnet inside a VPC."""
    _change(node, lambda st: st.add_subnet(subnet_id, vpc, cidr), f"subnet {subnet_id} added")


@subnet_app.command("list")
def subnet_list(node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Subnets with their VPC and ENIs."""
    st = _state(node)
    rows = [{"id": s.id, "vpc": s.vpc, "cidr": s.cidr,
             "enis": sorted(e.id for e in st.enis.values() if e.subnet == s.id)}
            for s in sorted(st.subnets.values(), key=lambda s: s.id)]
    output.emit(out, rows, lambda d: output.table(
        None, ["subnet", "vpc", "cidr", "ENIs"],
        [(r["id"], r["vpc"], r["cidr"], len(r["enis"])) for r in d]))


@subnet_app.command("del")
def subnet_del(subnet_id: str = typer.Argument(..., metavar="ID"), node: str = NODE_OPT) -> None:
    """Delete a subnet that no function uses."""
    _change(node, lambda st: st.del_subnet(subnet_id), f"subnet {subnet_id} deleted")


@sg_app.command("add")
def sg_add(sg_id: str = typer.Argument(..., metavar="ID"),
           vpc: str = typer.Option(..., "--vpc", "-v"), node: str = NODE_OPT) -> None:
    """Create an empty security group (it allows nothing until rules are added)."""
    _change(node, lambda st: st.add_sg(sg_id, vpc), f"security group {sg_id} added")


def _rule_args(egress: bool, ingress: bool, proto: str, ports: Optional[str], cidr: str):
    from .errors import InvalidInput, UsageError
    from .model import State

    if egress == ingress:
        raise UsageError("give exactly one of --egress or --ingress")
    try:
        return State.make_rule("egress" if egress else "ingress", proto, ports, cidr)
    except InvalidInput as e:  # only the options are involved, e.g. --ports with --proto icmp
        raise UsageError(str(e)) from None


@rule_app.command("add")
def rule_add(sg_id: str = typer.Argument(..., metavar="SG"),
             egress: bool = typer.Option(False, "--egress", "-E"),
             ingress: bool = typer.Option(False, "--ingress", "-I"),
             proto: str = typer.Option(..., "--proto", "-p", callback=params.proto,
                                       help="tcp, udp, icmp or all."),
             ports: Optional[str] = typer.Option(None, "--ports", "-P", callback=params.ports,
                                                 help="P or P-Q."),
             cidr: str = typer.Option(..., "--cidr", "-c", callback=params.cidr),
             node: str = NODE_OPT) -> None:
    """Add a rule; egress rules apply to new flows at once."""
    rule = _rule_args(egress, ingress, proto, ports, cidr)
    _change(node, lambda st: st.add_rule(sg_id, rule), f"rule added to {sg_id}")


@rule_app.command("del")
def rule_del(sg_id: str = typer.Argument(..., metavar="SG"),
             egress: bool = typer.Option(False, "--egress", "-E"),
             ingress: bool = typer.Option(False, "--ingress", "-I"),
             proto: str = typer.Option(..., "--proto", "-p", callback=params.proto),
             ports: Optional[str] = typer.Option(None, "--ports", "-P", callback=params.ports),
             cidr: str = typer.Option(..., "--cidr", "-c", callback=params.cidr),
             node: str = NODE_OPT) -> None:
    """Delete a rule; flows it allowed keep working until they end or are flushed (as in AWS)."""
    rule = _rule_args(egress, ingress, proto, ports, cidr)
    _change(node, lambda st: st.del_rule(sg_id, rule), f"rule deleted from {sg_id}")


def _sg_doc(st, g) -> dict:
    return {"id": g.id, "vpc": g.vpc,
            "egress": [{"proto": r.proto, "ports": r.ports, "cidr": r.cidr}
                       for r in g.rules if r.direction == "egress"],
            "ingress": [{"proto": r.proto, "ports": r.ports, "cidr": r.cidr}
                        for r in g.rules if r.direction == "ingress"],
            "functions": sorted(f.name for f in st.functions.values() if g.id in f.sgs)}


@sg_app.command("list")
def sg_list(node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Security groups with their rule counts."""
    st = _state(node)
    rows = [_sg_doc(st, g) for g in sorted(st.sgs.values(), key=lambda g: g.id)]
    output.emit(out, rows, lambda d: output.table(
        None, ["group", "vpc", "egress", "ingress", "functions"],
        [(r["id"], r["vpc"], len(r["egress"]), len(r["ingress"]), " ".join(r["functions"]))
         for r in d]))


@sg_app.command("show")
def sg_show(sg_id: str = typer.Argument(..., metavar="SG"), node: str = NODE_OPT,
            out: Format = OUT_OPT) -> None:
    """One security group's rules."""
    st = _state(node)
    doc = _sg_doc(st, st.sg(sg_id))
    output.emit(out, doc, lambda d: output.table(
        f"security group {d['id']} (VPC {d['vpc']})", ["direction", "proto", "ports", "cidr"],
        [(dr, r["proto"], r["ports"], r["cidr"]) for dr in ("egress", "ingress") for r in d[dr]]))


@sg_app.command("del")
def sg_del(sg_id: str = typer.Argument(..., metavar="SG"), node: str = NODE_OPT) -> None:
    """Delete a security group that no function uses."""
    _change(node, lambda st: st.del_sg(sg_id), f"security group {sg_id} deleted")


@worker_app.command("add")
def worker_add(ip: str = typer.Argument(..., metavar="IP", callback=params.ipv4),
               mac: Optional[str] = typer.Option(
                   None, "--mac", "-m", callback=params.mac,
                   help="Pin the worker's MAC (default: learned from its first frame, then kept)."),
               node: str = NODE_OPT) -> None:
    """Allow a worker host (its outer address) to send tunnel traffic."""
    _change(node, lambda st: st.add_worker(ip, mac), f"worker {ip} added")


@worker_app.command("relearn")
def worker_relearn(ip: str = typer.Argument(..., metavar="IP"), node: str = NODE_OPT) -> None:
    """Adopt the next MAC the worker's address arrives from (after its NIC really changed)."""
    from .datapath import Datapath

    a = _state(node).worker(ip)
    if a in _state(node).worker_macs:
        from .errors import UsageError
        raise UsageError(f"worker {a} has a static MAC; set another with `worker del` and "
                         f"`worker add --mac`, or apply -f")
    with Datapath(node) as dp:
        dp.relearn_worker(a)
    output.info(f"worker {a}: the next MAC its frames come from is adopted")


@worker_app.command("list")
def worker_list(node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Registered workers, their MAC (static or learned), and the functions placed on each."""
    from . import node as nodemod

    st = _state(node)
    live: dict[str, dict] = {}
    if nodemod.is_up(node):
        from .datapath import Datapath

        with Datapath(node) as dp:
            live = dp.workers()
    rows = []
    for w in sorted(st.workers):
        d = live.get(w, {})
        rows.append({"ip": w, "mac": d.get("mac") or st.worker_macs.get(w),
                     "mac_source": d.get("mac_source") or
                     ("static" if w in st.worker_macs else None),
                     "relearn": d.get("relearn", False), "vlans": d.get("vlans", []),
                     "functions": sorted(f.name for f in st.functions.values() if w in f.workers)})
    output.emit(out, rows, lambda d: output.table(
        None, ["worker", "MAC", "VLANs", "functions"],
        [(r["ip"], f"{r['mac']} ({r['mac_source']}{', relearn' if r['relearn'] else ''})"
          if r["mac"] else "-", " ".join(map(str, r["vlans"])) or "-",
          " ".join(r["functions"]) or "-") for r in d]))


@worker_app.command("del")
def worker_del(ip: str = typer.Argument(..., metavar="IP", callback=params.ipv4),
               node: str = NODE_OPT) -> None:
    """Stop accepting tunnel traffic from a worker."""
    _change(node, lambda st: st.del_worker(ip), f"worker {ip} deleted")


@function_app.command("attach")
def function_attach(name: str = typer.Argument(..., metavar="NAME"),
                    subnet: list[str] = typer.Option(..., "--subnet", "-s", help="Repeatable."),
                    sg: list[str] = typer.Option(..., "--sg", "-g", help="Repeatable, at most 5."),
                    worker: list[str] = typer.Option(
                        [], "--worker", "-w",
                        help="Place it on this worker too (repeatable); see `function place`."),
                    node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Attach a function: per subnet, the shared ENI of (subnet, groups), created if needed."""
    from . import ops

    data, rep = ops.attach_function(node, name, subnet, sg, worker)
    _done(node, rep, f"function {name} attached")
    output.emit(out, data, lambda d: output.table(
        f"function {name}", ["subnet", "ENI", "address", "VNI"],
        [(e["subnet"], e["id"], e["address"], e["vni"]) for e in d["enis"]]))


@function_app.command("place")
def function_place(name: str = typer.Argument(..., metavar="NAME"),
                   worker: list[str] = typer.Option(..., "--worker", "-w", help="Repeatable."),
                   node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Let workers send for a function: on each of its ENIs, a map update per worker."""
    from . import ops

    data, rep = ops.place_function(node, name, worker)
    _done(node, rep, f"function {name} placed on {', '.join(worker)}")
    output.emit(out, data,
                lambda d: output.info(f"function {name} runs on: {' '.join(d['workers'])}"))


@function_app.command("unplace")
def function_unplace(name: str = typer.Argument(..., metavar="NAME"),
                     worker: list[str] = typer.Option(..., "--worker", "-w", help="Repeatable."),
                     node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Stop workers sending for a function; their flows on ENIs no other placed function
    of theirs uses are removed at once."""
    from . import ops

    data, rep = ops.unplace_function(node, name, worker)
    _done(node, rep, f"function {name} unplaced from {', '.join(worker)}")
    output.emit(out, data,
                lambda d: output.info(f"function {name} runs on: {' '.join(d['workers']) or '-'}"))


@function_app.command("detach")
def function_detach(name: str = typer.Argument(..., metavar="NAME"), node: str = NODE_OPT) -> None:
    """Detach a function; an ENI no function uses any more is deleted with its flows."""
    from . import ops

    _, rep = ops.detach_function(node, name)
    _done(node, rep, f"function {name} detached")


@function_app.command("list")
def function_list(node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Functions with their subnets, groups and ENIs."""
    from . import ops

    rows = ops.list_functions(node)
    output.emit(out, rows, lambda d: output.table(
        None, ["function", "subnets", "groups", "workers", "ENIs (address, VNI)"],
        [(r["name"], " ".join(r["subnets"]), " ".join(r["security_groups"]),
          " ".join(r["workers"]) or "-",
          " ".join(f"{e['id']} ({e['address']}, {e['vni']})" for e in r["enis"])) for r in d]))


def _of_limit(r: dict) -> str:
    entries = "-" if r["flow_entries"] is None else f"{r['flow_entries']:,}"
    own = "" if r["max_flows"] else " (node)"
    return f"{entries} / {r['flow_limit']:,}{own}"


@eni_app.command("list")
def eni_list(node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Shared ENIs, the functions each one serves, and its flow entries against its limit."""
    from . import ops

    rows = ops.list_enis(node)
    output.emit(out, rows, lambda d: output.table(
        f"{len(d)} ENIs serving {sum(len(r['functions']) for r in d)} function attachments",
        ["ENI", "subnet", "address", "VNI", "groups", "functions", "flows / limit"],
        [(r["id"], r["subnet"], r["address"], r["vni"], " ".join(r["security_groups"]),
          " ".join(r["functions"]), _of_limit(r)) for r in d]))


@eni_app.command("set")
def eni_set(eni_id: str = typer.Argument(..., metavar="ID"),
            max_flows: int = typer.Option(..., "--max-flows", "-m",
                                          callback=params.eni_flow_limit,
                                          help="Its flows at most; 0: the node default "
                                               "(`limits set --flows-per-eni`)."),
            node: str = NODE_OPT) -> None:
    """Set one ENI's own flow limit (it goes with the ENI when no function uses it any more)."""
    _change(node, lambda st: st.set_eni_max_flows(eni_id, max_flows),
            f"ENI {eni_id}: " + (f"at most {max_flows} flows" if max_flows
                                 else "the node's flow limit"))


@eni_app.command("show")
def eni_show(eni_id: str = typer.Argument(..., metavar="ID"), node: str = NODE_OPT,
             out: Format = OUT_OPT) -> None:
    """One ENI: its functions, groups, live flows, flow entries against its limit, counters."""
    from . import node as nodemod
    from .ops import eni_doc, eni_limits_doc
    st = _state(node)
    e = st.eni(eni_id)
    doc = {**eni_doc(e), "vpc": st.subnets[e.subnet].vpc, "functions": st.eni_functions(e.id),
           **eni_limits_doc(st, e, None), "flows": None, "counters": None}
    if nodemod.is_up(node):
        from .datapath import Datapath
        with Datapath(node) as dp:
            doc["flows"] = len(dp.flows(vni=e.vni, include_expired=False))
            doc["flow_entries"] = dp.eni_flow_entries().get(e.vni, 0)
            doc["counters"] = dp.eni_stats(e.vni).get(e.vni)

    def render(d: dict) -> None:
        output.table(f"ENI {d['id']}", ["field", "value"], [
            ("VPC / subnet", f"{d['vpc']} / {d['subnet']}"), ("address", d["address"]),
            ("VNI", d["vni"]), ("port range", "-".join(map(str, d["port_range"]))),
            ("security groups", " ".join(d["security_groups"])),
            ("functions", " ".join(d["functions"])),
            ("flows in use", "node not up" if d["flows"] is None else d["flows"]),
            ("flow entries / limit", _of_limit(d))]
            + [(k, f"{v:,}") for k, v in (d["counters"] or {}).items()])

    output.emit(out, doc, render)


def _group_option(ctx: typer.Context, name: str, value):
    """`flows --node X flush` must mean `flows flush --node X`: the group parses options written
    before the subcommand, so the subcommand takes them unless it was given its own. The
    command line beats the environment, which beats the default; two different values on the
    command line are a usage error rather than a guess."""
    from .errors import UsageError

    rank = {"COMMANDLINE": 2, "ENVIRONMENT": 1}  # by name: Typer vendors its own click
    parent = ctx.parent
    theirs = rank.get(getattr(parent.get_parameter_source(name), "name", ""), 0) if parent else 0
    ours = rank.get(getattr(ctx.get_parameter_source(name), "name", ""), 0)
    if theirs == ours == 2 and parent.params[name] != value:
        raise UsageError(f"--{name} given twice ({parent.params[name]} and {value})")
    return parent.params[name] if theirs > ours else value


@flows_app.callback()
def flows(ctx: typer.Context,
          eni: Optional[str] = typer.Option(None, "--eni", "-e", help="Only this ENI's flows."),
          vpc: Optional[str] = typer.Option(None, "--vpc", "-v", help="Only this VPC's flows."),
          limit: int = typer.Option(100, "--limit", "-l", help="At most this many flows."),
          show_all: bool = typer.Option(False, "--all", "-a",
                                        help="Expired and reset flows too (not live: their next "
                                             "packet is a new flow, a RST or a drop)."),
          node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """List live flows (one entry each, both directions) with state and idle seconds;
    `flows sweep` removes expired ones, `flows flush` every one."""
    if ctx.invoked_subcommand:
        from .errors import UsageError

        for opt, name in (("limit", "limit"), ("out", "output"), ("show_all", "all")):
            if getattr(ctx.get_parameter_source(opt), "name", "") == "COMMANDLINE":
                raise UsageError(f"--{name} applies to the flow list, not to "
                                 f"`flows {ctx.invoked_subcommand}`")
        return
    from . import ops

    rows = ops.list_flows(node, eni, vpc, limit, include_expired=show_all)
    output.emit(out, rows, lambda d: output.table(
        f"{len(d)} flows" + ("" if show_all else " (live; --all for expired ones too)"),
        ["ENI", "proto", "environment", "via", "remote", "state", "idle s", "pkts out/in"],
        [(r["eni"] or r["vni"], r["proto"], f"{r['env']} ({r['worker']})", r["nat"], r["remote"],
          r["state"] + ("" if r["live"] else " (expired)"), r["idle_s"],
          f"{r['packets_out']}/{r['packets_in']}") for r in d]))


@flows_app.command("flush")
def flows_flush(ctx: typer.Context,
                eni: Optional[str] = typer.Option(None, "--eni", "-e", help="Only this ENI's."),
                vpc: Optional[str] = typer.Option(None, "--vpc", "-v", help="Only this VPC's."),
                node: str = NODE_OPT) -> None:
    """Remove flows (all, or one ENI's or VPC's): their next packet is a new flow, checked again."""
    from . import node as nodemod
    from .datapath import Datapath
    from .errors import NotFound

    node = _group_option(ctx, "node", node)
    eni = _group_option(ctx, "eni", eni)
    vpc = _group_option(ctx, "vpc", vpc)
    if not nodemod.is_up(node):
        raise NotFound(f"node {node} is not up")
    from .ops import flow_vnis

    vnis = flow_vnis(_state(node), eni, vpc)
    with Datapath(node) as dp:
        n = dp.flush_flows(vnis=vnis) if vnis is None or vnis else 0
    scope = f"ENI {eni}" if eni else f"VPC {vpc}" if vpc else "all ENIs"
    output.info(f"flushed {n} flows of {scope} on node {node}")


@flows_app.command("sweep")
def flows_sweep(ctx: typer.Context, node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Remove expired flows now (ports come back without it; it keeps listings and counts true)."""
    from . import node as nodemod
    from .datapath import Datapath
    from .errors import NotFound

    node = _group_option(ctx, "node", node)
    if not nodemod.is_up(node):
        raise NotFound(f"node {node} is not up")
    with Datapath(node) as dp:
        result = dp.sweep()
    if result["reaper"] != "kernel":
        output.info(f"node {node}'s programs predate the kernel reaper: swept from user space, "
                    f"where a flow taken over during the sweep can see one RST; "
                    f"`eniplane upgrade --node {node}` adds it")
    output.emit(out, {"node": node, **result}, lambda d: output.info(
        f"swept {d['removed']} expired flows on node {node}" +
        (f" ({d['kept']} taken over or used again meanwhile, kept)" if d["kept"] else "")))


class LogView(str, enum.Enum):
    default = "default"
    custom = "custom"


@flows_app.command("log")
def flows_log(ctx: typer.Context,
              interval: int = typer.Option(60, "--interval", "-i", min=1,
                                           help="Aggregation window in seconds (AWS: 60 or 600)."),
              directory: Optional[str] = typer.Option(
                  None, "--dir", "-d", help="Write rotating files here instead of stdout."),
              view: LogView = typer.Option(LogView.default, "--format", "-f",
                                           help="default: AWS's version 2 fields (the ENI's "
                                                "view); custom: also vpc-id, subnet-id, "
                                                "flow-direction, pkt-srcaddr, pkt-dstaddr."),
              account: str = typer.Option("-", "--account-id",
                                          help="The account-id field of every record."),
              node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Write flow logs in the AWS VPC Flow Logs format in the foreground until Ctrl-C or
    SIGTERM (the window in progress is written then): ACCEPT records per flow, direction and
    window, REJECT records for security-group denials, NODATA for an idle ENI."""
    import signal
    import time

    from . import node as nodemod
    from .errors import NotFound
    from .flowlogs import FlowLogger, FlowLogWriter

    node = _group_option(ctx, "node", node)
    if not nodemod.is_up(node):
        raise NotFound(f"node {node} is not up")
    fmt = "json" if out == Format.json else view.value
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with FlowLogger(node, directory, interval, account=account,
                    writer=FlowLogWriter(directory, fmt)) as logger:
        output.info(f"flow logs of node {node}: {interval} s windows to "
                    f"{directory or 'stdout'} ({fmt}); Ctrl-C stops")
        try:
            logger.tick(time.monotonic())
            while not stop:
                time.sleep(min(1.0, interval / 4))
                logger.tick(time.monotonic())
        except KeyboardInterrupt:
            pass
        logger.flush()  # the window in progress, so that nothing seen is left out
        output.info(f"{logger.records} flow log records written")


# ---- flow lifecycle settings ----------------------------------------------------------------
_TIMEOUT_USE = {"tcp_established": "TCP after the handshake, until FIN or RST",
                "tcp_transitory": "TCP before the handshake ends, or after FIN or RST",
                "udp": "UDP", "icmp": "ICMP echo"}


@timeouts_app.command("show")
def timeouts_show(node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """The idle timeouts in seconds: a flow idle longer is expired and its port free again."""
    data = dict(_state(node).timeouts)
    output.emit(out, data, lambda d: output.table(
        f"node {node} idle timeouts", ["timeout", "seconds", "applies to"],
        [(k, v, _TIMEOUT_USE[k]) for k, v in d.items()]))


@timeouts_app.command("set")
def timeouts_set(tcp_established: Optional[int] = typer.Option(
                     None, "--tcp-established", "-e", callback=params.seconds, metavar="S",
                     help="TCP after the handshake (default 350)."),
                 tcp_transitory: Optional[int] = typer.Option(
                     None, "--tcp-transitory", "-t", callback=params.seconds, metavar="S",
                     help="TCP before the handshake ends, or after FIN or RST (default 240)."),
                 udp: Optional[int] = typer.Option(None, "--udp", "-u", callback=params.seconds,
                                                   metavar="S", help="UDP (default 350)."),
                 icmp: Optional[int] = typer.Option(None, "--icmp", "-i", callback=params.seconds,
                                                    metavar="S", help="ICMP echo (default 60)."),
                 node: str = NODE_OPT) -> None:
    """Change idle timeouts (whole seconds >= 1); existing flows are judged by the new values."""
    from .errors import UsageError

    given = {k: v for k, v in (("tcp_established", tcp_established),
                               ("tcp_transitory", tcp_transitory), ("udp", udp), ("icmp", icmp))
             if v is not None}
    if not given:
        raise UsageError("give at least one of --tcp-established, --tcp-transitory, --udp, --icmp")
    _change(node, lambda st: st.set_timeouts(**given),
            "timeouts set: " + ", ".join(f"{k} {v} s" for k, v in given.items()))


@limits_app.command("show")
def limits_show(node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """The node's default flow limit per ENI (`eni set --max-flows` overrides it per ENI)."""
    data = {"flows_per_eni": _state(node).flows_per_eni}
    output.emit(out, data, lambda d: output.table(
        f"node {node} limits", ["limit", "value"], [(k, f"{v:,}") for k, v in d.items()]))


@limits_app.command("set")
def limits_set(flows_per_eni: int = typer.Option(..., "--flows-per-eni", "-f",
                                                 callback=params.flow_limit, metavar="N",
                                                 help="Each ENI's flows at most (default 65000)."),
               node: str = NODE_OPT) -> None:
    """Set the default flow limit per ENI: a new flow over it is dropped (drop_flow_limit)."""
    _change(node, lambda st: st.set_flows_per_eni(flows_per_eni),
            f"limits set: flows_per_eni {flows_per_eni}")


# ---- IPv4 settings ---------------------------------------------------------------------------
class OnOff(str, enum.Enum):
    on = "on"
    off = "off"


_IPV4_USE = {"mss_clamp": "lower the MSS of SYN and SYN/ACK to what fits the VPC link and tunnel",
             "icmp_rate": "ICMP messages the node may generate per second per CPU (0: none)",
             "tunnel_gateway": "source of the node's ICMP inside the tunnel (traceroute's hop)"}


def _settings_show(out: Format, title: str, data: dict, value, use: dict[str, str]) -> None:
    """A node-wide settings group: JSON as stored, or a table of each setting, its value as
    people write it (`value(name, v)`) and what it does."""
    output.emit(out, data, lambda d: output.table(
        title, ["setting", "value", "what it does"],
        [(k, value(k, v), use[k]) for k, v in d.items()]))


def _ipv4_value(name: str, v) -> str:
    return ("on" if v else "off") if name == "mss_clamp" else str(v)


@ipv4_app.command("show")
def ipv4_show(node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """The IPv4 settings: MSS clamping, the ICMP rate, the tunnel gateway's address."""
    _settings_show(out, f"node {node} IPv4 settings", dict(_state(node).ipv4), _ipv4_value,
                   _IPV4_USE)


@ipv4_app.command("set")
def ipv4_set(mss_clamp: Optional[OnOff] = typer.Option(
                 None, "--mss-clamp", "-m",
                 help="Clamp the MSS of SYN and SYN/ACK (default on); off only where something "
                      "else clamps."),
             icmp_rate: Optional[int] = typer.Option(
                 None, "--icmp-rate", "-r", callback=params.icmp_rate, metavar="N",
                 help="ICMP messages the node may generate per second per CPU; 0: none "
                      "(default 1000)."),
             tunnel_gateway: Optional[str] = typer.Option(
                 None, "--tunnel-gateway", "-g", callback=params.tunnel_gateway, metavar="ADDR",
                 help="Source address of the node's ICMP inside the tunnel (default "
                      "169.254.0.1)."),
             node: str = NODE_OPT) -> None:
    """Change IPv4 settings; the datapath applies them to the next packet."""
    from .errors import UsageError

    given = {k: v for k, v in (("mss_clamp", None if mss_clamp is None else
                                 mss_clamp is OnOff.on),
                               ("icmp_rate", icmp_rate), ("tunnel_gateway", tunnel_gateway))
             if v is not None}
    if not given:
        raise UsageError("give at least one of --mss-clamp, --icmp-rate, --tunnel-gateway")
    _change(node, lambda st: st.set_ipv4(**given),
            "IPv4 settings set: " + ", ".join(f"{k} {_ipv4_value(k, v)}"
                                              for k, v in given.items()))


# ---- the agent --------------------------------------------------------------------------------
class FlowLogInterval(str, enum.Enum):
    one_minute = "60"
    ten_minutes = "600"


@app.command("agent")
def agent_cmd(metrics: str = typer.Option(
                  "127.0.0.1:9469", "--metrics", "-M", metavar="HOST:PORT",
                  help="Serve /metrics, /healthz and /readyz here; off: nowhere."),
              socket_path: Optional[str] = typer.Option(
                  None, "--socket", "-s", metavar="PATH",
                  help="The API's Unix socket (default /run/eniplane/api.sock, or "
                       "/run/eniplane/NODE/api.sock for another node)."),
              api_tcp: Optional[str] = typer.Option(
                  None, "--api-tcp", metavar="HOST:PORT",
                  help="Serve the API on TCP too (keep it on 127.0.0.1: it has no "
                       "authentication)."),
              flow_logs: Optional[str] = typer.Option(
                  None, "--flow-logs", "-F", metavar="DIR",
                  help="Write flow logs (AWS VPC Flow Logs format) under DIR (default: none)."),
              flow_log_interval: FlowLogInterval = typer.Option(
                  FlowLogInterval.one_minute, "--flow-log-interval",
                  help="Flow log aggregation window in seconds: 60 or 600."),
              sweep_interval: float = typer.Option(
                  10.0, "--sweep-interval", metavar="S",
                  help="Seconds between two sweeps of expired flows."),
              node: str = NODE_OPT) -> None:
    """Run the node's control plane in the foreground: bring the node up from the stored `up`
    parameters, keep the maps as the store says, sweep flows, serve the API and metrics.
    SIGTERM stops it; the datapath keeps forwarding."""
    import logging
    import signal
    from pathlib import Path

    from .agent import Agent, parse_address

    metrics_addr = parse_address(metrics, "--metrics")
    tcp = parse_address(api_tcp, "--api-tcp") if api_tcp else None
    tasks, registry, on_swept, on_stop = _agent_plugins(node, flow_logs,
                                                        int(flow_log_interval.value))
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="eniplane agent: %(levelname)s %(message)s")
    agent = Agent(node, Path(socket_path) if socket_path else None, metrics_addr, tcp,
                  sweep_interval, tasks, registry, on_swept, on_stop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: agent.stop())
    agent.run()


def _agent_plugins(node: str, flow_logs: Optional[str], interval: int):
    """What the agent runs beside its own work: the datapath's metrics (metrics.py) in its
    registry, and flow logs (flowlogs.py) as a task that also hears of swept flows and, when
    the agent stops, writes the window in progress. Returns (tasks, registry, on_swept,
    on_stop)."""
    from prometheus_client import CollectorRegistry

    from .flowlogs import FlowLogger
    from .metrics import DatapathCollector

    registry = CollectorRegistry()
    tasks: list = []
    on_swept = None
    on_stop: list = []
    registry.register(DatapathCollector(node))
    if flow_logs:
        logger = FlowLogger(node, flow_logs, interval, "default")
        tasks.append(logger.tick)
        on_swept = logger.flow_ended
        on_stop += [logger.flush, logger.close]
    return tasks, registry, on_swept, on_stop


# ---- events settings -------------------------------------------------------------------------
_EVENTS_USE = {"drops": "report dropped packets to `eniplane monitor` (sampled)",
               "flows": "report new flows to `eniplane monitor` (sampled)",
               "rate": "events the node may report per second per CPU (0: none)"}


def _events_value(name: str, v) -> str:
    return str(v) if name == "rate" else ("on" if v else "off")


@events_app.command("show")
def events_show(node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """The events settings: drops and new flows on or off, the rate."""
    _settings_show(out, f"node {node} events settings", dict(_state(node).events),
                   _events_value, _EVENTS_USE)


@events_app.command("set")
def events_set(drops: Optional[OnOff] = typer.Option(
                   None, "--drops", "-d", help="Report dropped packets (default on)."),
               flows: Optional[OnOff] = typer.Option(
                   None, "--flows", "-f", help="Report new flows (default off)."),
               rate: Optional[int] = typer.Option(
                   None, "--rate", "-r", min=0, max=0xFFFFFFFF, metavar="N",
                   help="Events the node may report per second per CPU; 0: none (default 100)."),
               node: str = NODE_OPT) -> None:
    """Change the events settings; the datapath applies them to the next packet."""
    from .errors import UsageError

    given = {k: v for k, v in (("drops", None if drops is None else drops is OnOff.on),
                               ("flows", None if flows is None else flows is OnOff.on),
                               ("rate", rate)) if v is not None}
    if not given:
        raise UsageError("give at least one of --drops, --flows, --rate")
    _change(node, lambda st: st.set_events(**given),
            "events settings set: " + ", ".join(f"{k} {_events_value(k, v)}"
                                                for k, v in given.items()))


@app.command("sync")
def sync_cmd(node: str = NODE_OPT) -> None:
    """Reprogram every map from the store (after a reboot, a reload or a crash)."""
    from .reconcile import sync

    rep = sync(node)
    _report(rep)
    output.info("in sync: " + (", ".join(f"{v} {k}" for k, v in rep.changed.items())
                               or "nothing to change"))


@app.command("export")
def export_cmd(node: str = NODE_OPT,
               file: Optional[str] = typer.Option(None, "--file", "-f", help="Write here.")) -> None:
    """Write the declared state as YAML (what `apply -f` takes)."""
    import yaml

    from .config import export_doc, write_text

    text = yaml.safe_dump(export_doc(_state(node)), sort_keys=False)
    if file:
        write_text(file, text)
        output.info(f"wrote {file}")
    else:
        sys.stdout.write(text)


@app.command("apply")
def apply_cmd(file: Optional[str] = typer.Option(None, "--file", "-f", help="YAML desired state."),
              dry_run: bool = typer.Option(False, "--dry-run", help="Show the difference only."),
              schema: bool = typer.Option(False, "--schema",
                                          help="Print the file format's JSON Schema and exit."),
              node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Make the whole configuration what FILE says, and print the difference."""
    import json

    from . import config
    from .errors import UsageError

    if schema:
        sys.stdout.write(json.dumps(config.schema(), indent=2) + "\n")
        return
    if file is None:
        raise UsageError("apply needs --file FILE (or --schema)")
    doc = config.read_doc(file)
    current = _state(node)
    with config.within(file):
        target = config.build_state(doc, current)
    changes = config.diff(current, target)
    if not dry_run and changes:
        def replace(st):
            st.__dict__.update(target.copy().__dict__)
        _change(node, replace, f"applied {len(changes)} changes")
    data = {"dry_run": dry_run, "changes": changes}
    output.emit(out, data, lambda d: output.table(
        ("would change" if dry_run else "changed") + f" ({len(changes)})", ["op", "kind", "id"],
        [(c["op"], c["kind"], c["id"]) for c in d["changes"]]) if changes
        else output.info("no changes"))


@app.command("bench", add_help_option=False, context_settings={"allow_extra_args": True,
                                                              "ignore_unknown_options": True})
def bench_cmd(ctx: typer.Context) -> None:
    """Run the benchmarks (same as `python -m bench`; `eniplane bench --help` for options)."""
    from bench.__main__ import main as bench_main

    raise typer.Exit(bench_main(list(ctx.args)))


def _use_plain_help(t: typer.Typer) -> None:
    """Every command of every group gets _Command's help (typer builds them from these infos
    when the CLI runs, so this runs once, after the last command is declared)."""
    for info in t.registered_commands:
        if info.cls in (None, TyperCommand):  # typer fills in its own class by default
            info.cls = _Command
    for g in t.registered_groups:
        if g.typer_instance is not None:
            _use_plain_help(g.typer_instance)


_use_plain_help(app)


def main() -> None:
    app(prog_name="eniplane")


if __name__ == "__main__":
    main()
