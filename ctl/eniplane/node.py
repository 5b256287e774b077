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


def _pinned_prog_ids(node: str) -> set[int]:
    ids = set()
    for name in PROGRAMS:
        pin = paths.progs_dir(node) / name
        if not pin.exists():
            continue
        try:
            fd = bpfsys.obj_get(str(pin))
        except EniplaneError:
            continue
        try:
            ids.add(bpfsys.prog_info(fd).id)
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
        prog_ids = _pinned_prog_ids(node)
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
    pinned = {}
    for name in PROGRAMS:
        fd = bpfsys.obj_get(str(paths.progs_dir(node) / name))
        try:
            pinned[name] = bpfsys.prog_info(fd).id
        finally:
            os.close(fd)
    from .datapath import Datapath

    with Datapath(node) as dp:
        clamps = dp.mss_clamps()
        settings = dp.ipv4_settings()
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
        except NotFound:
            row["error"] = "interface not found"
        ifaces.append(row)
    maps = []
    for name in MAP_NAMES:
        with PinnedMap(str(paths.maps_dir(node) / name)) as m:
            n = m.count()
            maps.append({"name": name, "type": m.type_name, "id": m.id, "entries": n,
                         "max_entries": m.max_entries,
                         "fill": round(n / m.max_entries, 4) if m.max_entries else 0.0})
    from .upgrade import build_status

    return {"node": node, "netns": rec.netns, "fabric_if": rec.fabric_if,
            "fabric_ip": rec.fabric_ip, "programs": pinned, "ipv4": settings,
            "interfaces": ifaces, "maps": maps, "build": build_status(rec)}
