"""The `eniplane` command line.

Contract: noun-verb groups; `-o json` puts a stable document on stdout, tables are for people;
messages and errors go to stderr. Exit codes: 0 ok, 1 operational error, 2 usage error. Domain
errors (EniplaneError) become one line and an exit code here, at the boundary, and nowhere else.
Heavy modules (bcc, pyroute2, rich) are imported inside the commands that need them, so that
`--help` and `stats` start fast; only `up` compiles C.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer
from typer.core import TyperGroup

from . import output
from .errors import EniplaneError
from .output import Format

NODE_OPT = typer.Option("default", "--node", "-n", envvar="ENIPLANE_NODE",
                        help="Node name: several nodes can share one machine.")
OUT_OPT = typer.Option(Format.table, "--output", "-o", help="table for people, json for scripts.")


class _Group(TyperGroup):
    def invoke(self, ctx):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except EniplaneError as e:
            sys.stderr.write(f"eniplane: error: {e}\n")
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            sys.stderr.write("eniplane: interrupted\n")
            raise typer.Exit(130) from None


app = typer.Typer(cls=_Group, no_args_is_help=True, add_completion=False,
                  help="eniplane: shared-ENI network function (XDP datapath, Python control plane).")
lab_app = typer.Typer(cls=TyperGroup, no_args_is_help=True, help="The namespace lab.")
maps_app = typer.Typer(cls=TyperGroup, no_args_is_help=True, help="Inspect the pinned maps.")
app.add_typer(lab_app, name="lab")
app.add_typer(maps_app, name="maps")


# ---- node life cycle ----------------------------------------------------------------------
@app.command()
def up(fabric_if: str = typer.Option(..., "--fabric-if", "-f", help="Interface facing the workers."),
       fabric_ip: str = typer.Option(..., "--fabric-ip", "-a", help="The node's tunnel address."),
       netns: Optional[str] = typer.Option(None, "--netns", "-N", help="Namespace of the node."),
       mode: str = typer.Option("auto", "--mode", "-m",
                                help="XDP mode: auto (native, else generic), native, generic."),
       max_flows: int = typer.Option(262144, "--max-flows", help="Flow table size per direction."),
       node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Compile and load the datapath, pin it and attach it to the fabric interface."""
    from . import node as nodemod

    if mode not in ("auto", "native", "generic"):
        raise typer.BadParameter("must be auto, native or generic", param_hint="--mode")
    rec = nodemod.up(node, fabric_if, fabric_ip, netns, mode, defines={"MAX_FLOWS": max_flows})
    mode_used = rec.interfaces[fabric_if]["mode"]
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
    """Detach the programs and remove the node's pins."""
    from . import node as nodemod

    detached = nodemod.down(node, keep_maps)
    output.info(f"node {node} is down (detached from {', '.join(detached) or 'no interface'})")


@app.command()
def status(node: str = NODE_OPT, out: Format = OUT_OPT) -> None:
    """Programs, hook and mode per interface, and each map's fill level."""
    from . import node as nodemod

    st = nodemod.status(node)

    def render(d: dict) -> None:
        output.info(f"node {d['node']}  namespace {d['netns'] or '-'}  fabric {d['fabric_if']} "
                    f"{d['fabric_ip']}")
        output.table("interfaces", ["interface", "program", "hook", "mode", "prog id", "attached"],
                     [(i["ifname"], i["program"], i["hook"], i["mode"], i["prog_id"],
                       "yes" if i["attached"] else "NO") for i in d["interfaces"]])
        output.table("maps", ["map", "type", "entries", "max", "fill"],
                     [(m["name"], m["type"], m["entries"], m["max_entries"],
                       f"{m['fill'] * 100:.1f}%") for m in d["maps"]])

    output.emit(out, st, render)


@app.command()
def stats(node: str = NODE_OPT, out: Format = OUT_OPT,
          nonzero: bool = typer.Option(False, "--nonzero", "-z", help="Hide counters at zero.")) -> None:
    """Every datapath counter by name, summed over CPUs."""
    from .datapath import Datapath

    with Datapath(node) as dp:
        counters = dp.stats()
    data = {"node": node, "counters": counters}

    def render(d: dict) -> None:
        rows = [(k, f"{v:,}") for k, v in d["counters"].items() if v or not nonzero]
        output.table(f"node {node} counters", ["counter", "value"], rows)

    output.emit(out, data, render)


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
def lab_down(name: Optional[str] = typer.Argument(None, help="Lab name; all labs when omitted.")) -> None:
    """Remove a lab's namespaces and processes."""
    from .lab import Lab

    names = [name] if name else Lab.all()
    for n in names:
        Lab.load(n).destroy()
        output.info(f"lab {n} removed")


@lab_app.command("list")
def lab_list(out: Format = OUT_OPT) -> None:
    """Labs that exist on this machine."""
    from .lab import Lab

    labs = [{"name": n, "namespaces": Lab.load(n).namespaces} for n in Lab.all()]
    output.emit(out, labs, lambda d: output.table(
        None, ["lab", "namespaces"], [(x["name"], " ".join(x["namespaces"].values())) for x in d]))


def main() -> None:
    app(prog_name="eniplane")


if __name__ == "__main__":
    main()
