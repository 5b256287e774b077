"""Datapath events: the node-wide settings that enable them, and decoding what they carry.

Contract: settings' names, defaults and checks (as ipv4.py for the IPv4 settings); datapath.py
alone knows how node_cfg holds them (flags, event_rate). `decode(raw, layout, names)` turns one
ring buffer record (struct event, its layout read from BTF by the caller, never restated here)
into a dict; `parse_frame` reads worker, VNI and the inner 5-tuple from the frame's first bytes.
Both are pure: no kernel, no maps. consts.h's DEFAULT_EVENT_RATE is held equal by a unit test.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, Mapping

from .errors import InvalidInput

DEFAULT_EVENT_RATE = 100  # events per second per CPU: a drop flood costs a bounded amount
U32_MAX = 0xFFFFFFFF
DEFAULTS: dict[str, Any] = {"drops": True, "flows": False, "rate": DEFAULT_EVENT_RATE}
NAMES = tuple(DEFAULTS)
KINDS = {1: "drop", 2: "flow-start"}  # types.h EVENT_K_*
DIRECTIONS = {0: "fabric", 1: "vpc"}  # types.h EVENT_DIR_*
VXLAN_PORT, GENEVE_PORT = 4789, 6081
PROTOS = {1: "icmp", 6: "tcp", 17: "udp"}


def _check_bool(name: str):
    def check(v: Any) -> bool:
        if not isinstance(v, bool):
            raise InvalidInput(f"events {name} must be true or false (on/off), not {v!r}")
        return v
    return check


def check_rate(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= U32_MAX:
        raise InvalidInput(f"events rate must be a whole number of events per second per CPU "
                           f"from 0 (none) to {U32_MAX}, not {n!r}")
    return n


_CHECKS = {"drops": _check_bool("drops"), "flows": _check_bool("flows"), "rate": check_rate}


def check_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Some of the settings, checked; unknown names are refused."""
    out = {}
    for k, v in values.items():
        if k not in _CHECKS:
            raise InvalidInput(f"unknown events setting {k!r} (known: {', '.join(NAMES)})")
        out[k] = _CHECKS[k](v)
    return out


# ---- frames ------------------------------------------------------------------------------------
def _ip(b: bytes) -> str:
    return str(ipaddress.IPv4Address(b))


def _skip_vlans(frame: bytes, off: int) -> tuple[int, int] | None:
    """(ethertype, offset of the payload) after an Ethernet header at `off` and its VLAN tags."""
    if len(frame) < off + 14:
        return None
    etype = struct.unpack_from("!H", frame, off + 12)[0]
    off += 14
    while etype in (0x8100, 0x88A8) and len(frame) >= off + 4:
        etype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    return etype, off


def _ipv4(frame: bytes, off: int) -> dict[str, Any] | None:
    """An IPv4 header at `off` and the ports after it (when they are there)."""
    if len(frame) < off + 20 or frame[off] >> 4 != 4:
        return None
    ihl = (frame[off] & 0xF) * 4
    proto = frame[off + 9]
    out: dict[str, Any] = {"src": _ip(frame[off + 12: off + 16]),
                           "dst": _ip(frame[off + 16: off + 20]),
                           "proto": PROTOS.get(proto, str(proto)), "l4": off + ihl}
    frag = struct.unpack_from("!H", frame, off + 6)[0] & 0x1FFF
    if proto in (6, 17) and not frag and len(frame) >= off + ihl + 4:
        out["sport"], out["dport"] = struct.unpack_from("!HH", frame, off + ihl)
    elif proto == 1 and len(frame) >= off + ihl + 2:
        out["icmp_type"], out["icmp_code"] = frame[off + ihl], frame[off + ihl + 1]
    return out


def parse_frame(frame: bytes) -> dict[str, Any]:
    """What a frame's first bytes say: for tunnel traffic the worker (outer source), the VNI and
    the inner packet's addresses and ports; otherwise the packet's own. Whatever is cut short
    is left out; `arp` marks ARP frames."""
    out: dict[str, Any] = {}
    eth = _skip_vlans(frame, 0)
    if eth is None:
        return out
    etype, off = eth
    if etype == 0x0806:
        return {"arp": True}
    if etype != 0x0800:
        return {"ethertype": etype}
    ip = _ipv4(frame, off)
    if ip is None:
        return out
    dport = ip.get("dport")
    if ip["proto"] == "udp" and dport in (VXLAN_PORT, GENEVE_PORT):
        t = ip["l4"] + 8
        if len(frame) < t + 8:
            return {"worker": ip["src"]}
        out = {"worker": ip["src"], "tunnel": "vxlan" if dport == VXLAN_PORT else "geneve",
               "vni": int.from_bytes(frame[t + 4: t + 7], "big")}
        inner = t + 8 + (4 * (frame[t] & 0x3F) if dport == GENEVE_PORT else 0)
        ieth = _skip_vlans(frame, inner)
        if ieth is None:
            return out
        if ieth[0] == 0x0806:
            out["arp"] = True
            return out
        ip = _ipv4(frame, ieth[1]) if ieth[0] == 0x0800 else None
        if ip is None:
            return out
    ip.pop("l4")
    out.update(ip)
    return out


# ---- events ------------------------------------------------------------------------------------
def decode(raw: bytes, layout, reasons: list[str]) -> dict[str, Any]:
    """One ring buffer record. `layout` is struct event's StructCodec (from BTF); `reasons` the
    stat ids' names in order (struct stats' fields)."""
    at = next(m.offset for m in layout.members if m.name == "data")
    head = layout.decode(bytes(raw[: layout.size]).ljust(layout.size, b"\0"))
    frame = bytes(raw[at: at + min(head["cap_len"], layout.size - at)])
    r = head["reason"]
    ev = {"ts_ns": head["ts_ns"], "kind": KINDS.get(head["kind"], str(head["kind"])),
          "reason": reasons[r] if r < len(reasons) else str(r),
          "direction": DIRECTIONS.get(head["direction"], str(head["direction"])),
          "ifindex": head["ifindex"], "cpu": head["cpu"], "len": head["len"]}
    ev.update(parse_frame(frame))
    ev["frame"] = frame.hex()
    return ev


def summary(ev: Mapping[str, Any]) -> str:
    """One line, as cilium monitor prints: what, why, where, and the packet."""
    where = f"{ev['direction']} if {ev['ifindex']} cpu {ev['cpu']}"
    head = f"{ev['kind'].upper()}: {ev['reason']} on {where}"
    if "eni" in ev:
        head += f" eni {ev['eni']}"
    if "worker" in ev:
        head += f" worker {ev['worker']} vni {ev.get('vni', '?')}"
    if "src" in ev:
        sp = f":{ev['sport']}" if "sport" in ev else ""
        dp = f":{ev['dport']}" if "dport" in ev else ""
        head += f" {ev['proto']} {ev['src']}{sp} -> {ev['dst']}{dp}"
    elif ev.get("arp"):
        head += " arp"
    return f"{head} len {ev['len']}"
