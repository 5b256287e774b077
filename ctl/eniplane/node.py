"""A node's life cycle: up, down, status, and attaching VPC-side interfaces.

Contract: `up` compiles and loads the datapath (with upgrade.py, the only paths that compile),
pins it under the node's name, attaches xdp_fabric to the fabric interface in the node's namespace
and records what it did, and the build it loaded, in <state dir>/node.json. The node-wide settings (idle timeouts, flows per ENI, the IPv4
settings) are written before the program is attached, so no packet meets a node without them. Any
failure rolls back what this call did, so nothing is left half-attached or half-pinned. Every
other function works from node.json and the pins alone.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from . import bpfsys, lock, netlink, paths
from .datapath import TX_SLOT_FABRIC
from .loader import PROG_FABRIC, PROG_VPC, PROGRAMS
from .errors import AlreadyExists, EniplaneError, InvalidInput, NotFound
from .ipv4 import DEFAULTS as IPV4_DEFAULTS
from .lifecycle import DEFAULT_FLOWS_PER_ENI, DEFAULT_TIMEOUTS

DEFAULT_GATEWAY_MAC = "02:e1:1a:00:00:01"


@dataclass
class NodeRecord:
    node: str
    netns: str | None
    fabric_if: str
    fabric_ip: str
    gateway_mac: str = DEFAULT_GATEWAY_MAC
    # ifname -> {"program": ..., "mode": "native"|"generic", "slot": int}
    interfaces: dict[str, dict] = field(default_factory=dict)
    # what the pinned programs were built from: {"hash": loader.build_hash, "defines": {-D}};
    # empty in a record written before builds were recorded (upgrade.py infers the defines)
    build: dict = field(default_factory=dict)

    @staticmethod
    def path(node: str) -> Path:
        return paths.state_dir(node) / "node.json"

    @classmethod
    def load(cls, node: str) -> "NodeRecord":
        p = cls.path(node)
        if not p.exists() or not (paths.progs_dir(node) / PROG_FABRIC).exists():
            raise NotFound(f"node {node} is not up")
        try:
            return cls(**json.loads(p.read_text()))
        except (ValueError, TypeError) as e:
            raise EniplaneError(f"{p} is corrupt: {e}") from None

    def save(self) -> None:
        p = self.path(self.node)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, p)


def is_up(node: str) -> bool:
    try:
        NodeRecord.load(node)
        return True
    except NotFound:
        return False


@lock.locked
def up(node: str, fabric_if: str, fabric_ip: str, netns: str | None = None, mode: str = "auto",
       gateway_mac: str = DEFAULT_GATEWAY_MAC, defines: dict[str, int] | None = None,
       timeouts: Mapping[str, int] = DEFAULT_TIMEOUTS,
       flows_per_eni: int = DEFAULT_FLOWS_PER_ENI,
       ipv4: Mapping[str, Any] = IPV4_DEFAULTS) -> NodeRecord:
    from . import loader
    from .datapath import Datapath

    paths.check_node_name(node)
    try:
        ipaddress.IPv4Address(fabric_ip)
    except ValueError:
        raise InvalidInput(f"--fabric-ip {fabric_ip!r} is not an IPv4 address") from None
    if is_up(node):
        raise AlreadyExists(f"node {node} is already up (eniplane down --node {node} first)")
    fab = netlink.link_get(netns, fabric_if)  # NotFound names the namespace or interface
    loader.check_bpffs()

    created_pins = not paths.pin_dir(node).exists()
    attached = False
    fds: dict[str, int] = {}
    try:
        build = {"hash": loader.build_hash(defines), "defines": dict(defines or {})}
        fds = loader.compile_and_pin(node, defines)
        rec = NodeRecord(node=node, netns=netns, fabric_if=fabric_if, fabric_ip=fabric_ip,
                         gateway_mac=gateway_mac, build=build)
        with Datapath(node, netns) as dp:
            dp.set_config(fabric_ip, fab["ifindex"], fab["mac"], gateway_mac, fab["mtu"])
            dp.set_timeouts(**timeouts)
            dp.set_flow_limit(flows_per_eni)
            dp.set_ipv4(**ipv4)
        m = netlink.xdp_attach(netns, fabric_if, fds[PROG_FABRIC], mode)
        attached = True
        rec.interfaces[fabric_if] = {"program": PROG_FABRIC, "mode": m,
                                     "slot": TX_SLOT_FABRIC}
        rec.save()
        return rec
    except BaseException:
        if attached:
            netlink.xdp_detach(netns, fabric_if)
        if created_pins:
            shutil.rmtree(paths.pin_dir(node), ignore_errors=True)
        else:
            shutil.rmtree(paths.progs_dir(node), ignore_errors=True)
        raise
    finally:
        for fd in fds.values():
            os.close(fd)


def fabric_mtu(node: str) -> int | None:
    """The fabric interface's MTU now (it may have changed since `up`), None if it is gone."""
    rec = NodeRecord.load(node)
    try:
        return netlink.link_get(rec.netns, rec.fabric_if)["mtu"] or None
    except NotFound:
        return None


@dataclass
class DownReport:
    """What `down` did, for the operator: a node whose record was lost is found by its pins."""
    detached: list[str] = field(default_factory=list)  # "fab0" or "fab0 in namespace X"
    removed: str | None = None  # the pin directory (or its progs/ part) that was removed
    had_record: bool = True
    notes: list[str] = field(default_factory=list)


def _stored_record(node: str) -> NodeRecord | None:
    """node.json as written, even when the pins are gone; None when absent or unreadable."""
    try:
        return NodeRecord(**json.loads(NodeRecord.path(node).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def pinned_prog_ids(node: str, missing_ok: bool = False) -> dict[str, int]:
    """The id of each pinned program, by name (status, upgrade). missing_ok: leave out a pin
    that is gone or unreadable instead of failing (`down` of a half-removed node)."""
    ids = {}
    for name in PROGRAMS:
        pin = paths.progs_dir(node) / name
        if missing_ok and not pin.exists():
            continue
        try:
            fd = bpfsys.obj_get(str(pin))
        except EniplaneError:
            if missing_ok:
                continue
            raise
        try:
            ids[name] = bpfsys.prog_info(fd).id
        finally:
            os.close(fd)
    return ids


@lock.locked
def down(node: str, keep_maps: bool = False) -> DownReport:
    """Detach every program of the node and remove its pins. Works from node.json when it is
    there; when it is gone (state directory removed, crash before it was written) the node's
    programs are looked for by id on every interface this host can name, then the pins go."""
    rec = _stored_record(node)
    pins = paths.pin_dir(node)
    if rec is None and not pins.exists():
        raise NotFound(f"node {node} is not up")
    report = DownReport(had_record=rec is not None)
    if rec is not None:
        targets: list[tuple[str | None, str]] = [(rec.netns, i) for i in rec.interfaces]
    else:
        prog_ids = set(pinned_prog_ids(node, missing_ok=True).values())
        targets = netlink.xdp_find(prog_ids)
        if not prog_ids:
            report.notes.append("no program was pinned, so none could be looked for")
        elif not targets:
            report.notes.append("no interface in the host or a named namespace carried its "
                                "programs; one in an unnamed namespace keeps its program "
                                "until that interface goes")
    for ns, ifname in targets:
        try:
            if netlink.xdp_detach(ns, ifname):
                report.detached.append(ifname if rec is not None or ns is None
                                       else f"{ifname} in namespace {ns}")
        except NotFound:
            pass  # the interface (or namespace) went away: nothing is attached to it any more
    gone = paths.progs_dir(node) if keep_maps else pins
    if gone.exists():
        shutil.rmtree(gone, ignore_errors=True)
        report.removed = str(gone)
    from .loader import staged_progs_dir

    shutil.rmtree(staged_progs_dir(node), ignore_errors=True)  # a dead upgrade's
    NodeRecord.path(node).unlink(missing_ok=True)
    return report


def attach_vpc_if(node: str, ifname: str, mode: str = "auto") -> dict:
    """Attach xdp_vpc to a VPC-side interface; returns its link info plus mode and tx slot."""
    from . import loader

    rec = NodeRecord.load(node)
    info = netlink.link_get(rec.netns, ifname)
    if ifname in rec.interfaces:
        entry = rec.interfaces[ifname]
    else:
        used = {v.get("slot", TX_SLOT_FABRIC) for v in rec.interfaces.values()}
        slot = next(i for i in range(1 << 16) if i not in used | {TX_SLOT_FABRIC})
        fd = loader.pinned_prog_fd(node, PROG_VPC)
        try:
            m = netlink.xdp_attach(rec.netns, ifname, fd, mode)
        finally:
            os.close(fd)
        entry = {"program": PROG_VPC, "mode": m, "slot": slot}
        rec.interfaces[ifname] = entry
        rec.save()
    return {**info, **entry}


def detach_vpc_if(node: str, ifname: str) -> None:
    rec = NodeRecord.load(node)
    if rec.interfaces.get(ifname, {}).get("program") != PROG_VPC:
        return
    try:
        netlink.xdp_detach(rec.netns, ifname)
    except NotFound:
        pass
    del rec.interfaces[ifname]
    rec.save()


def status(node: str) -> dict:
    from .datapath import MAP_NAMES
    from .maps import PinnedMap

    rec = NodeRecord.load(node)
    pinned = pinned_prog_ids(node, missing_ok=True)  # an earlier build may have had fewer
    from .datapath import Datapath

    with Datapath(node) as dp:
        clamps = dp.mss_clamps()
        settings = dp.ipv4_settings()
        gateways = {idx: {**dp.gateway(idx), "ifindex": v["ifindex"]}
                    for idx, v in dp.vpcs().items()}
        counters = dp.stats()
        # Part A's reader, where the datapath has it: kernel redirect failures per ifindex
        redirects = dp.redirect_failures() if hasattr(dp, "redirect_failures") else {}
    ifaces = []
    for ifname, entry in rec.interfaces.items():
        row = {"ifname": ifname, "program": entry["program"], "hook": "xdp",
               "mode": entry["mode"], "attached": False, "prog_id": 0, "mtu": None,
               "mss_clamp": None}
        try:
            info = netlink.link_get(rec.netns, ifname)
            row["prog_id"] = info["xdp_prog_id"]
            row["mode"] = info["xdp_mode"] or entry["mode"]
            row["attached"] = info["xdp_prog_id"] == pinned[entry["program"]]
            row["mtu"] = info["mtu"]
            row["mss_clamp"] = clamps.get(info["ifindex"])
            row["ifindex"] = info["ifindex"]
        except NotFound:
            row["error"] = "interface not found"
        ifaces.append(row)
    maps = []
    for name in MAP_NAMES:
        if not (paths.maps_dir(node) / name).exists():
            continue  # a map the build that pinned the node did not have (upgrade adds it)
        with PinnedMap(str(paths.maps_dir(node) / name)) as m:
            n = m.count()
            maps.append({"name": name, "type": m.type_name, "id": m.id, "entries": n,
                         "max_entries": m.max_entries,
                         "fill": round(n / m.max_entries, 4) if m.max_entries else 0.0})
    from .upgrade import build_status

    return {"node": node, "netns": rec.netns, "fabric_if": rec.fabric_if,
            "fabric_ip": rec.fabric_ip, "programs": pinned, "ipv4": settings,
            "interfaces": ifaces, "maps": maps, "build": build_status(rec),
            "warnings": warnings(node, rec, ifaces, gateways, counters, redirects)}


TUNNEL_OVERHEAD = 50  # outer Ethernet-less IPv4 + UDP + VXLAN + inner Ethernet: what a reply adds


def _warning(kind: str, subject: str, problem: str, fix: str) -> dict[str, str]:
    return {"kind": kind, "subject": subject, "problem": problem, "fix": fix}


def warnings(node: str, rec: NodeRecord, ifaces: list[dict], gateways: dict[int, dict],
             counters: dict[str, int],
             redirects: dict[int, int] | None = None) -> list[dict[str, str]]:
    """What would lose packets without a counter saying why (or with one nobody reads): each
    problem with its fix. `ifaces` as status lists them, `gateways` the attached VPCs' gateway
    (Datapath.gateway plus the ifindex) by VPC handle, `counters` Datapath.stats(),
    `redirects` the kernel's redirect failures by ifindex."""
    out = []
    up_again = (f"`eniplane down --keep-maps --node {node}`, then `eniplane up` with the same "
                f"options (flows survive)")
    by_index = {i.get("ifindex"): i for i in ifaces if i.get("ifindex")}
    for i in ifaces:
        name = i["ifname"]
        if i.get("error"):
            out.append(_warning(
                "interface_missing", name,
                f"interface {name} went away: nothing it carried is forwarded",
                f"recreate {name}, then {up_again}"))
            continue
        if not i["attached"]:
            out.append(_warning(
                "program_not_attached", name,
                f"{name} does not run the node's {i['program']} (XDP program "
                f"{i['prog_id'] or 'none'} instead): its packets bypass the datapath",
                up_again))
        if i["mode"] == "generic":
            out.append(_warning(
                "generic_mode", name,
                f"{name} runs XDP in generic (skb) mode: each packet is made an skb before "
                f"the datapath sees it, several times slower than native, and under load the "
                f"kernel's backlog drops packets that no eniplane counter sees (only "
                f"/proc/net/softnet_stat)",
                f"use a driver with native XDP, then `eniplane down` and `eniplane up --mode "
                f"native`"))
        try:
            peer = netlink.veth_peer(rec.netns, name)
        except EniplaneError:
            peer = None
        if peer is not None and peer["ifname"] is not None and not peer["xdp_prog_id"]:
            where = f"namespace {peer['netns']}" if peer["netns"] else "the host namespace"
            out.append(_warning(
                "veth_peer_without_xdp", name,
                f"{name} is a veth whose peer {peer['ifname']} (in {where}) has no XDP "
                f"program: frames the node sends out of {name} (redirected or XDP_TX) are "
                f"dropped by the kernel without a counter, since the peer's NAPI is off",
                f"attach a native XDP program to {peer['ifname']} in {where} (one that passes "
                f"everything will do); GRO does not turn NAPI on for XDP frames"))
    fabric = next((i for i in ifaces if i["ifname"] == rec.fabric_if), None)
    fabric_mtu = fabric.get("mtu") if fabric else None
    for i in ifaces:
        if i["program"] == PROG_VPC and fabric_mtu and i.get("mtu") and \
                fabric_mtu < i["mtu"] + TUNNEL_OVERHEAD:
            out.append(_warning(
                "fabric_mtu", i["ifname"],
                f"the fabric MTU ({fabric_mtu}) is smaller than {i['ifname']}'s MTU "
                f"({i['mtu']}) plus {TUNNEL_OVERHEAD} bytes of tunnel headers: a reply larger "
                f"than {fabric_mtu - TUNNEL_OVERHEAD} bytes is dropped (drop_fabric_mtu, "
                f"{counters.get('drop_fabric_mtu', 0)} so far) or answered with ICMP "
                f"fragmentation needed, and TCP only avoids it through the MSS clamp",
                f"raise {rec.fabric_if}'s MTU to {i['mtu'] + TUNNEL_OVERHEAD} or more (jumbo "
                f"frames on the fabric), or lower {i['ifname']}'s MTU to "
                f"{fabric_mtu - TUNNEL_OVERHEAD}; then `eniplane sync`"))
    for ifindex, n in sorted((redirects or {}).items()):
        if n:
            name = by_index.get(ifindex, {}).get("ifname", f"ifindex {ifindex}")
            out.append(_warning(
                "redirect_failed", name,
                f"the kernel refused {n} frames redirected to {name} (a peer without XDP, a "
                f"frame over its MTU, a device that is down)",
                f"see the other warnings for {name}; `eniplane monitor --drops` shows them live"))
    names = _vpc_names(node)
    for idx, gw in sorted(gateways.items()):
        if gw["mac"] is None:
            iface = by_index.get(gw["ifindex"], {}).get("ifname", f"ifindex {gw['ifindex']}")
            vpc = names.get(idx, f"handle {idx}")
            out.append(_warning(
                "gateway_unknown", f"VPC {vpc}",
                f"the gateway {gw['ip']} of VPC {vpc} never answered ARP on {iface}: every "
                f"packet into the VPC is dropped (drop_no_gateway_mac, "
                f"{counters.get('drop_no_gateway_mac', 0)} so far)",
                f"check that {gw['ip']} is the VPC's gateway and reachable on {iface}, then "
                f"`eniplane sync` (it asks again), or set its MAC: `eniplane vpc add {vpc} ... "
                f"--gateway-mac MAC`"))
    return out


def _vpc_names(node: str) -> dict[int, str]:
    """VPC handle -> id, as the store has them (empty without a store)."""
    from .store import Store

    try:
        return {v.idx: v.id for v in Store.peek(node).vpcs.values()}
    except EniplaneError:
        return {}
