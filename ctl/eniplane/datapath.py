"""The node's pinned maps, programmed in the datapath's own terms.

Contract: this is the one place that writes configuration into the maps: `up` and the tests use it
now, the control plane's reconcile uses it too. Layouts come from the maps' BTF (maps.py); field
names here are the C field names of types.h. Writes that depend on a network namespace (tx_ports
resolves ifindexes in the writer's namespace) take the node's namespace. What the datapath
computes (the port probe, the flow guard's value) is mirrored in probe.py; this module only reads
the maps for it and writes the result.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Collection, Iterable

from . import events as event_settings
from . import bpfsys, ipv4, lifecycle, paths, probe
from .maps import PinnedMap, fast_decoder, sum_percpu
from .bpfsys import BPF_NOEXIST
from .errors import EniplaneError, InvalidInput
from .netlink import in_netns
from .sgcompile import Rule, compile_rules

# Held equal to the C by tests/unit/test_consts.py: the pins of maps.h, types.h's VPC_F_* flags
# and maps.h's TX_SLOT_FABRIC.
MAP_NAMES = ("config", "workers", "worker_slots", "placements", "enis", "eni_cache", "eni_addrs",
             "vpcs", "vpc_ifs", "vpc_if_slots", "sg_rules", "flows", "flow_hot", "hot_gen",
             "flow_guard", "eni_flows_added", "eni_flows_removed", "open_scratch", "fabric_calls",
             "fabric_long",
             "icmp_bucket", "frags", "stats", "eni_stats", "clock", "event_cpu", "sg_denials",
             "redirect_failures", "events", "tx_ports", "reap_batch", "reap_stats")
VPC_F_GW_MAC, VPC_F_ACTIVE, VPC_F_GW_RELEARN, VPC_F_GW_STATIC = 1, 2, 4, 8
WORKER_F_MAC, WORKER_F_RELEARN, WORKER_F_STATIC = 1, 2, 4
NO_MAC = "00:00:00:00:00:00"
CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)  # Linux's clock id 6
TX_SLOT_FABRIC = 0



NODE_F_NO_MSS_CLAMP = 1  # types.h: node_cfg.flags
NODE_F_EVENT_DROPS, NODE_F_EVENT_FLOWS = 2, 4
NODE_F_NO_HOT = 8  # established packets the long way, no slot touched (bench.hot_ab's switch)
HOT_GEN_BUSY = 0xFFFFFFFF  # types.h: the gen of a slot being written, never hot_gen's

# The kernel reaper (eniplane.c: xdp_flow_reap), its modes and results (types.h: REAP_*), and
# the lock file that lets one sweep or flush at a time remove entries (and use its batch map)
REAPER = "xdp_flow_reap"
REAP_MODE_SWEEP, REAP_MODE_FLUSH = 1, 2
REAP_REMOVED, REAP_CHANGED, REAP_LIVE, REAP_GONE = 1, 2, 3, 4
REAP_LOCK = "reap.lock"
FLUSH_ROUNDS = 3  # a flush reaps an entry that changed under it again, this many times at most


@dataclass
class Removal:
    """What Datapath._remove_flows did: entries removed (and by state name), kept (chosen, then
    found changed or live again), gone (chosen, then found deleted by someone else), and which
    reaper ran ("kernel" or "user space")."""
    reaper: str
    removed: int = 0
    kept: int = 0
    gone: int = 0
    by_state: Counter = field(default_factory=Counter)


def _events_config(values: dict, flags: int) -> dict:
    """node_cfg's fields for the events settings (events.py)."""
    flags &= ~(NODE_F_EVENT_DROPS | NODE_F_EVENT_FLOWS)
    flags |= (NODE_F_EVENT_DROPS if values["drops"] else 0) | \
        (NODE_F_EVENT_FLOWS if values["flows"] else 0)
    return {"flags": flags, "event_rate": values["rate"]}


def _events_of(cfg: dict) -> dict:
    """The events settings a node_cfg holds (set_config always writes them)."""
    flags = cfg.get("flags", 0)
    return {"drops": bool(flags & NODE_F_EVENT_DROPS), "flows": bool(flags & NODE_F_EVENT_FLOWS),
            "rate": cfg.get("event_rate", 0)}


def _netns_ino(netns: str | None) -> int:
    """The namespace's inode number: what the redirect-failure programs compare (eniplane.c)."""
    from .netlink import NETNS_RUN_DIR
    return os.stat(os.path.join(NETNS_RUN_DIR, netns) if netns else "/proc/self/ns/net").st_ino


def _ipv4_config(values: dict, flags: int) -> dict:
    """node_cfg's fields for the IPv4 settings (ipv4.py); `flags` as node_cfg holds them now."""
    clamp = 0 if values["mss_clamp"] else NODE_F_NO_MSS_CLAMP
    return {"flags": (flags & ~NODE_F_NO_MSS_CLAMP) | clamp, "icmp_rate": values["icmp_rate"],
            "tunnel_gateway": values["tunnel_gateway"]}


def _ipv4_of(cfg: dict) -> dict:
    """The IPv4 settings a node_cfg holds: the defaults where user space never wrote them (a
    tunnel gateway is always written, and never 0.0.0.0)."""
    if cfg.get("tunnel_gateway", "0.0.0.0") == "0.0.0.0":
        return dict(ipv4.DEFAULTS)
    return {"mss_clamp": not cfg.get("flags", 0) & NODE_F_NO_MSS_CLAMP,
            "icmp_rate": cfg.get("icmp_rate", 0), "tunnel_gateway": cfg["tunnel_gateway"]}

class Datapath:
    def __init__(self, node: str, netns: str | None = None):
        self.node = node
        self.netns = netns
        self._maps: dict[str, PinnedMap] = {}
        self._reap_at: dict[str, int] | None = None
        self._reaper_fd: int | None = None
        # tests only: called with ("chosen", entries) after the table was read and before the
        # first reap, and ("reaped", entries) once they were removed and before anything is
        # put back (the kernel reaper: after each batch; the user-space path: after each pop)
        self._reap_hook: Callable[[str, list], None] | None = None
        self._slot_decode: Callable[[bytes], dict[str, Any]] | None = None

    def __enter__(self) -> "Datapath":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()
        if self._reaper_fd is not None:
            os.close(self._reaper_fd)
            self._reaper_fd = None

    def map(self, name: str) -> PinnedMap:
        if name not in self._maps:
            self._maps[name] = PinnedMap(str(paths.maps_dir(self.node) / name))
        return self._maps[name]

    # ---- node ------------------------------------------------------------------------------
    def set_config(self, fabric_ip: str, fabric_ifindex: int, fabric_mac: str, gateway_mac: str,
                   fabric_mtu: int) -> None:
        """The node's identity. The port secret is chosen once and kept: established flows are
        found again by a probe that starts where port_hash with that secret says."""
        old = self.map("config").lookup(0)
        secret = old["port_secret"] if old and old["port_secret"] else \
            int.from_bytes(os.urandom(4), "little") or 1
        cfg = {"fabric_ip": fabric_ip, "fabric_mac": fabric_mac, "gateway_mac": gateway_mac,
               "fabric_mtu": fabric_mtu, "port_secret": secret,
               "eni_gen": _next_gen(old["eni_gen"] if old else 0)}
        # timeouts and the flow limit are kept (set_timeouts, set_flow_limit), or defaulted
        for name, field in lifecycle.TIMEOUT_FIELDS.items():
            cfg[field] = (old or {}).get(field) or lifecycle.DEFAULT_TIMEOUTS[name]
        cfg["flows_per_eni"] = (old or {}).get("flows_per_eni") or lifecycle.DEFAULT_FLOWS_PER_ENI
        # the IPv4 settings too (set_ipv4): what they were, or the defaults on a fresh node
        cfg.update(_ipv4_config(_ipv4_of(old or {}), (old or {}).get("flags", 0)))
        # and the events settings: kept, or the defaults on a fresh node (no fabric_ifindex yet)
        events = _events_of(old) if old and old.get("fabric_ifindex") else event_settings.DEFAULTS
        cfg.update(_events_config(dict(events), cfg["flags"]))
        cfg["fabric_ifindex"] = fabric_ifindex
        cfg["netns_ino"] = _netns_ino(self.netns)
        self.map("config").update(0, cfg)
        self.set_tx_port(TX_SLOT_FABRIC, fabric_ifindex)

    def config(self) -> dict:
        return self.map("config").lookup(0)

    def _set_config_fields(self, fields: dict[str, int]) -> None:
        """Change some of node_cfg's fields, keeping the rest (the datapath reads them per
        packet: a change applies at once)."""
        m = self.map("config")
        cfg = m.lookup(0)
        cfg.update(fields)
        m.update(0, cfg)

    # ---- flow lifecycle --------------------------------------------------------------------
    def timeouts(self) -> dict[str, int]:
        """The idle timeouts in force, whole seconds, by name (lifecycle.TIMEOUT_NAMES)."""
        cfg = self.config() or {}
        return {name: cfg.get(field) or lifecycle.DEFAULT_TIMEOUTS[name]
                for name, field in lifecycle.TIMEOUT_FIELDS.items()}

    def set_timeouts(self, **seconds: int) -> dict[str, int]:
        """Set some timeouts (whole seconds >= 1); existing flows are judged by them at once."""
        vals = lifecycle.validate_timeouts(seconds)
        self._set_config_fields({lifecycle.TIMEOUT_FIELDS[k]: v for k, v in vals.items()})
        return self.timeouts()

    def flow_limit(self) -> int:
        """The node's default per-ENI flow limit (an ENI's max_flows overrides it)."""
        return (self.config() or {}).get("flows_per_eni") or lifecycle.DEFAULT_FLOWS_PER_ENI

    def set_flow_limit(self, n: int) -> None:
        self._set_config_fields({"flows_per_eni": lifecycle.check_flow_limit("flows per ENI", n)})

    def fabric_mtu(self) -> int:
        return (self.config() or {}).get("fabric_mtu", 0)

    def set_fabric_mtu(self, mtu: int) -> None:
        """The fabric interface's MTU, which bounds replies (drop_fabric_mtu, fragmentation
        needed) and the MSS clamp: read at `up`, again by every reconcile."""
        self._set_config_fields({"fabric_mtu": mtu})

    # ---- IPv4 settings (ipv4.py) ---------------------------------------------------------
    def ipv4_settings(self) -> dict:
        """MSS clamping on or off, the ICMP rate per CPU, the tunnel gateway's address."""
        return _ipv4_of(self.config() or {})

    def set_ipv4(self, **values) -> dict:
        """Change some of the IPv4 settings; the datapath applies them to the next packet."""
        vals = ipv4.check_settings(values)
        cfg = self.config() or {}
        self._set_config_fields(_ipv4_config({**_ipv4_of(cfg), **vals}, cfg.get("flags", 0)))
        return self.ipv4_settings()

    # ---- events (events.py) -----------------------------------------------------------------
    def events_settings(self) -> dict:
        """Drop events on or off, new-flow events on or off, the rate per CPU."""
        return _events_of(self.config() or {})

    def set_events(self, **values) -> dict:
        """Change some of the events settings; the datapath applies them to the next packet."""
        vals = event_settings.check_settings(values)
        cfg = self.config() or {}
        self._set_config_fields(_events_config({**_events_of(cfg), **vals}, cfg.get("flags", 0)))
        return self.events_settings()

    def event_layout(self):
        """struct event's codec, from event_cpu's BTF (a ring buffer's records carry none)."""
        codec = self.map("event_cpu").value_codec
        return next(m.codec for m in codec.members if m.name == "ev")

    def event_reasons(self) -> list[str]:
        """The stat ids' names in order: what an event's reason indexes."""
        return self.map("stats").value_fields

    def sg_denials(self) -> list[dict]:
        """Every security-group denial since the entries were last taken: the denied flow as
        the environment sent it, and its packets, bytes, first and last time (coarse ns)."""
        return [{**k, **v} for k, v in self.map("sg_denials").items()]

    def take_sg_denials(self) -> list[dict]:
        """sg_denials(), deleting what was read (each entry read and deleted in one step: a
        packet denied meanwhile starts a new entry, never lost)."""
        m = self.map("sg_denials")
        out = []
        for raw in list(m.keys_raw()):
            v = m.pop(raw)
            if v is not None:
                out.append({**m.decode_key(raw), **v})
        return out

    def redirect_failures(self) -> dict[int, int]:
        """Frames the kernel could not deliver after a redirect, by egress ifindex (0: not
        known), counted by the tracepoint programs since the maps were made."""
        return {k: v for k, v in self.map("redirect_failures").items()}

    def now_ns(self) -> int:
        """The datapath's clock: CLOCK_MONOTONIC_COARSE, which bpf_ktime_get_coarse_ns reads,
        plus the shift a test build's clock_shift map adds (eniplane.c)."""
        now = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
        pin = paths.maps_dir(self.node) / "clock_shift"
        if pin.exists():
            now += self.map("clock_shift").lookup(0) or 0
        return now

    def eni_flow_entries(self) -> dict[int, int]:
        """The flow entries each ENI holds against its limit (eni_flows_added - _removed), by
        VNI."""
        added, removed = self.map("eni_flows_added"), self.map("eni_flows_removed")
        return {vni: max(0, added.lookup(e["eni_idx"]) - removed.lookup(e["eni_idx"]))
                for vni, e in self.map("enis").items()}

    def _count_removed(self, by_idx: Counter) -> None:
        """Entries this process deleted, per ENI handle: what the limit no longer counts."""
        m = self.map("eni_flows_removed")
        for idx, n in by_idx.items():
            if n and 0 <= idx < m.max_entries:
                m.update(idx, (m.lookup(idx) or 0) + n)

    def _entries_added(self) -> dict[int, int]:
        """eni_flows_added of every programmed ENI, by handle."""
        m = self.map("eni_flows_added")
        return {e["eni_idx"]: m.lookup(e["eni_idx"]) for _, e in self.map("enis").items()}

    def _recount_entries(self, added: dict[int, int], held: Counter) -> None:
        """What the LRU evicted leaves no trace in eni_flows_removed: after reading the whole
        table, raise each ENI's removed count to what the table holds (`added` read before the
        table, so a flow that opened meanwhile makes the count high, never low: the limit may
        act a little early until the next recount, never late)."""
        m = self.map("eni_flows_removed")
        for idx, n in added.items():
            gone = n - held[idx]
            if gone > (m.lookup(idx) or 0):
                m.update(idx, gone)

    def _reset_entries(self, idx: int) -> None:
        """An ENI handle that goes (or serves another ENI) starts its counts again."""
        self.map("eni_flows_added").update(idx, 0)
        self.map("eni_flows_removed").update(idx, 0)

    def set_tx_port(self, slot: int, ifindex: int) -> None:
        with in_netns(self.netns):
            self.map("tx_ports").update(slot, ifindex)

    def del_tx_port(self, slot: int) -> None:
        self.map("tx_ports").delete(slot)

    # ---- workers ---------------------------------------------------------------------------
    def add_worker(self, ip: str, mac: str | None = None) -> None:
        """Register a worker (or change its static MAC). Without `mac` the datapath learns the
        MAC from the worker's first frame and keeps it; a MAC learned so far is kept."""
        m = self.map("workers")
        old = m.lookup(ip)
        if mac is not None:
            w = {"mac": mac, "flags": WORKER_F_MAC | WORKER_F_STATIC, "vlan_depth": 0,
                 "vlans": [{"tpid": 0, "tci": 0}] * 2}
            if old and old["flags"] & WORKER_F_MAC and old["mac"] == mac:
                w.update(vlan_depth=old["vlan_depth"], vlans=old["vlans"])  # tags learned
        elif old is not None:
            if not old["flags"] & WORKER_F_STATIC:
                return self._own_slot(ip, old)
            w = {**old, "flags": old["flags"] & ~WORKER_F_STATIC}  # static no more: keep it
        else:
            w = {"mac": NO_MAC, "flags": 0, "vlan_depth": 0, "vlans": [{"tpid": 0, "tci": 0}] * 2}
        m.update(ip, w)
        self._own_slot(ip, w)

    def _own_slot(self, ip: str, w: dict) -> None:
        """Copy a worker's entry into its slot, when the slot is free or already the worker's."""
        slots = self.map("worker_slots")
        slot = _worker_slot(ip, slots.max_entries)
        if slots.lookup(slot)["addr"] in ("0.0.0.0", ip):
            publish_slot(slots, slot, "addr", {"addr": ip, "w": w})

    def relearn_worker(self, ip: str) -> None:
        """Adopt the next MAC the worker's address arrives from (`worker relearn`)."""
        m = self.map("workers")
        old = m.lookup(ip)
        if old is None:
            from .errors import NotFound
            raise NotFound(f"worker {ip} is not programmed (eniplane sync)")
        w = {**old, "flags": (old["flags"] | WORKER_F_RELEARN) & ~WORKER_F_STATIC}
        m.update(ip, w)
        self._own_slot(ip, w)

    def workers(self) -> dict[str, dict]:
        """Each worker's MAC (None until learned), how it was set, and its outer VLAN tags."""
        out = {}
        for ip, w in self.map("workers").items():
            known = bool(w["flags"] & WORKER_F_MAC)
            out[ip] = {"mac": w["mac"] if known else None,
                       "mac_source": None if not known else
                       ("static" if w["flags"] & WORKER_F_STATIC else "learned"),
                       "relearn": bool(w["flags"] & WORKER_F_RELEARN),
                       "vlans": [v["tci"] & 0xFFF for v in w["vlans"][:w["vlan_depth"]]]}
        return out

    def del_workers(self, ips: Collection[str]) -> None:
        """Established flows do not look the worker up again: its flows go with it (one pass
        over the flow tables for all the workers). A slot a removed worker owned goes to another
        worker that maps to it."""
        slots = self.map("worker_slots")
        for ip in ips:
            slot = _worker_slot(ip, slots.max_entries)
            if slots.lookup(slot)["addr"] == ip:
                publish_slot(slots, slot, "addr", None)
            self.map("workers").delete(ip)
        if ips:
            for ip, w in self.map("workers").items():
                slot = _worker_slot(ip, slots.max_entries)
                if slots.lookup(slot)["addr"] == "0.0.0.0":
                    publish_slot(slots, slot, "addr", {"addr": ip, "w": w})
            self.flush_flows(workers=ips)

    # ---- placement -------------------------------------------------------------------------
    def placements(self) -> dict[tuple[str, int], int]:
        return {(k["worker"], k["vni"]): v for k, v in self.map("placements").items()}

    def sync_placements(self, want: dict[tuple[str, int], int]) -> tuple[int, int]:
        """Make `placements` hold exactly `want`; a pair that goes takes its flows with it, so
        that the worker's next packet on that ENI is a new flow, and refused. Returns (added or
        changed, removed)."""
        m = self.map("placements")
        have = self.placements()
        changed = 0
        for (w, vni), n in want.items():
            if have.get((w, vni)) != n:
                m.update({"worker": w, "vni": vni}, n)
                changed += 1
        gone = set(have) - set(want)
        for w, vni in gone:
            m.delete({"worker": w, "vni": vni})
        if gone:
            self.flush_flows(pairs=gone)
        return changed, len(gone)

    def worker_macs(self) -> dict[str, str]:
        """The MAC the datapath knows for each worker, for those it knows one of."""
        return {ip: w["mac"] for ip, w in self.workers().items() if w["mac"]}

    # ---- VPC attachments -------------------------------------------------------------------
    def set_vpc(self, ifindex: int, vpc_idx: int, gateway_ip: str, if_mac: str, tx_slot: int,
                gateway_mac: str | None = None, mtu: int = 0) -> None:
        """vpcs[vpc_idx] and vpc_ifs[ifindex]. `gateway_mac` pins the gateway's MAC (static);
        without it a MAC already known for the same gateway is kept (learned MACs are kept
        until `vpc relearn`), else the datapath learns it from the gateway's first ARP. `mtu`
        is the interface's (0: unknown), which bounds the MSS that SYNs may announce."""
        m = self.map("vpcs")
        old = m.lookup(vpc_idx)
        flags = VPC_F_ACTIVE
        same_gw = bool(old and old["flags"] & VPC_F_GW_MAC and old["gateway_ip"] == gateway_ip
                       and old["ifindex"] == ifindex)
        if gateway_mac is not None:
            flags |= VPC_F_GW_MAC | VPC_F_GW_STATIC
        elif same_gw and not old["flags"] & VPC_F_GW_STATIC:
            gateway_mac = old["gateway_mac"]
            flags |= VPC_F_GW_MAC | (old["flags"] & VPC_F_GW_RELEARN)
        if old and old["flags"] & VPC_F_ACTIVE and old["ifindex"] != ifindex:
            self._unmap_if(old["ifindex"])
        self.set_tx_port(tx_slot, ifindex)
        m.update(vpc_idx, {"ifindex": ifindex, "gateway_ip": gateway_ip,
                           "gateway_mac": gateway_mac or NO_MAC, "if_mac": if_mac,
                           "flags": flags, "tx_slot": tx_slot, "mtu": mtu})
        self._map_if(ifindex, vpc_idx)

    def mss_clamps(self) -> dict[int, int | str]:
        """The MSS that SYNs and SYN/ACKs through each VPC's interface may announce, by ifindex:
        mss_of in eniplane.c (the smaller of the interface's MTU and the fabric's less 50 bytes
        of tunnel headers, less 40; never below 536), or "off" for every one when the node does
        not clamp (NODE_F_NO_MSS_CLAMP). tests/datapath/test_mss.py holds the two equal."""
        cfg = self.config() or {}
        fabric = cfg.get("fabric_mtu", 0)
        tunnel = fabric - 50 if fabric > 50 + 40 else 1500
        clamping = _ipv4_of(cfg)["mss_clamp"]
        out: dict[int, int | str] = {}
        for _, v in self.map("vpcs").items():
            if v["flags"] & VPC_F_ACTIVE:
                mtu = min(v["mtu"], tunnel) if v["mtu"] else tunnel
                out[v["ifindex"]] = (mtu - 40 if mtu > 40 + 536 else 536) if clamping else "off"
        return out

    def relearn_gateway(self, vpc_idx: int) -> None:
        """Adopt the next MAC the VPC's gateway shows in ARP (`vpc relearn`); the MAC known so
        far stays in use until then."""
        m = self.map("vpcs")
        v = m.lookup(vpc_idx)
        if not v or not v["flags"] & VPC_F_ACTIVE:
            from .errors import NotFound
            raise NotFound(f"VPC handle {vpc_idx} is not programmed (eniplane sync)")
        v["flags"] = (v["flags"] | VPC_F_GW_RELEARN) & ~VPC_F_GW_STATIC
        m.update(vpc_idx, v)

    def gateway(self, vpc_idx: int) -> dict | None:
        """The gateway's MAC as the datapath uses it: None until known, and how it was set."""
        v = self.vpc(vpc_idx)
        if v is None:
            return None
        known = bool(v["flags"] & VPC_F_GW_MAC)
        return {"ip": v["gateway_ip"], "mac": v["gateway_mac"] if known else None,
                "mac_source": None if not known else
                ("static" if v["flags"] & VPC_F_GW_STATIC else "learned"),
                "relearn": bool(v["flags"] & VPC_F_GW_RELEARN)}

    def _map_if(self, ifindex: int, vpc_idx: int) -> None:
        """vpc_ifs always; the interface's slot too unless another interface owns it."""
        self.map("vpc_ifs").update(ifindex, vpc_idx)
        slots = self.map("vpc_if_slots")
        slot = ifindex % slots.max_entries
        if slots.lookup(slot)["ifindex"] in (0, ifindex):
            publish_slot(slots, slot, "ifindex", {"ifindex": ifindex, "vpc_idx": vpc_idx})

    def _unmap_if(self, ifindex: int) -> None:
        """The slot goes first (a packet in between finds vpc_ifs); an interface that shares the
        slot takes it over."""
        slots = self.map("vpc_if_slots")
        slot = ifindex % slots.max_entries
        if slots.lookup(slot)["ifindex"] == ifindex:
            publish_slot(slots, slot, "ifindex", None)
            for other, idx in self.map("vpc_ifs").items():
                if other != ifindex and other % slots.max_entries == slot:
                    publish_slot(slots, slot, "ifindex", {"ifindex": other, "vpc_idx": idx})
                    break
        self.map("vpc_ifs").delete(ifindex)

    def vpc(self, vpc_idx: int) -> dict | None:
        v = self.map("vpcs").lookup(vpc_idx)
        return v if v and v["flags"] & VPC_F_ACTIVE else None

    def vpcs(self) -> dict[int, dict]:
        return {k: v for k, v in self.map("vpcs").items() if v["flags"] & VPC_F_ACTIVE}

    def gateway_mac(self, vpc_idx: int, gateway_ip: str | None = None) -> str | None:
        """The MAC known for an attached VPC's gateway (learned or set), None until there is one;
        with `gateway_ip`, only while the VPC's gateway is that address."""
        gw = self.gateway(vpc_idx)
        if gw is None or (gateway_ip is not None and gw["ip"] != gateway_ip):
            return None
        return gw["mac"]

    def del_vpc(self, vpc_idx: int) -> None:
        old = self.vpc(vpc_idx)
        if old:
            self.del_tx_port(old["tx_slot"])
            self._unmap_if(old["ifindex"])
            self.map("vpcs").update(vpc_idx, b"")  # array slots cannot go: zero = inactive

    # ---- ENIs ------------------------------------------------------------------------------
    def set_eni(self, vni: int, eni_idx: int, vpc_idx: int, addr: str,
                port_lo: int = 1024, port_hi: int = 65535, max_flows: int = 0) -> None:
        """Program one ENI; max_flows is its flow limit (0: the node's flows_per_eni)."""
        old = self.map("enis").lookup(vni)
        if old and (old["vpc_idx"], old["addr"]) != (vpc_idx, addr):
            self.map("eni_addrs").delete({"vpc_idx": old["vpc_idx"], "addr": old["addr"]})
        # A flow's key and probe come from the ENI's VPC, address and range: change any of them
        # and its flows could not be found again, so they go first.
        moved = old is not None and (old["vpc_idx"], old["addr"], old["port_lo"],
                                     old["port_hi"]) != (vpc_idx, addr, port_lo, port_hi)
        if not 0 < eni_idx < self.map("eni_stats").max_entries:
            raise InvalidInput(f"ENI handle {eni_idx} is outside 1-"
                               f"{self.map('eni_stats').max_entries - 1} (MAX_ENIS)")
        lifecycle.check_flow_limit(f"ENI {vni} max flows", max_flows, zero="the node default")
        if old and old["eni_idx"] != eni_idx:
            self.map("eni_stats").update(old["eni_idx"], b"")
        if old is None or old["eni_idx"] != eni_idx:
            self._reset_entries(eni_idx)
        self.map("enis").update(vni, {"eni_idx": eni_idx, "vpc_idx": vpc_idx, "addr": addr,
                                      "port_lo": port_lo, "port_hi": port_hi,
                                      "max_flows": max_flows})
        self.map("eni_addrs").update({"vpc_idx": vpc_idx, "addr": addr},
                                     {"vni": vni, "eni_idx": eni_idx})
        self._eni_changed()
        if moved:
            self.flush_flows(vnis={vni})

    def _eni_changed(self) -> None:
        """A new generation makes every CPU's eni_cache slot stale (types.h)."""
        m = self.map("config")
        cfg = m.lookup(0)
        if cfg and cfg["fabric_ip"] != "0.0.0.0":
            cfg["eni_gen"] = _next_gen(cfg["eni_gen"])
            m.update(0, cfg)

    def enis(self) -> dict[int, dict]:
        """Every programmed ENI by VNI, as set_eni wrote it."""
        return dict(self.map("enis").items())

    def set_sg_rules(self, vni: int, rules: Iterable[Rule]) -> int:
        """Replace one ENI's compiled rules; returns how many prefixes it now has."""
        return self.sync_sg_rules({vni: list(rules)}, scope={vni})

    def sync_sg_rules(self, rules_by_vni: dict[int, list[Rule]],
                      scope: set[int] | None = None) -> int:
        """Make sg_rules hold exactly the compiled rules given, for the VNIs in `scope` (every
        VNI when None): one pass over the map however many ENIs there are."""
        m = self.map("sg_rules")
        want: dict[bytes, dict] = {}
        for vni, rules in rules_by_vni.items():
            for (proto, cidr), ranges in compile_rules(list(rules)).items():
                key = {"prefixlen": 64 + cidr.prefixlen, "vni": vni, "proto": proto,
                       "addr": str(cidr.network_address)}
                want[m.key_codec.encode(key)] = {
                    "n": len(ranges), "ranges": [{"lo": a, "hi": b} for a, b in ranges]}
        for k in list(m.keys_raw()):
            if k not in want and (scope is None or m.key_codec.decode(k)["vni"] in scope):
                m.delete(k)
        for k, v in want.items():
            raw = m.value_codec.encode(v)
            if m.lookup_raw(k) != raw:
                m.update(k, raw)
        return len(want)

    def del_enis(self, vnis: Collection[int]) -> None:
        """Remove ENIs with their compiled groups and their flows, in one pass over each map."""
        gone = []
        for vni in vnis:
            old = self.map("enis").lookup(vni)
            if old:
                self.map("eni_addrs").delete({"vpc_idx": old["vpc_idx"], "addr": old["addr"]})
                self.map("enis").delete(vni)
                self.map("eni_stats").update(old["eni_idx"], b"")
                gone.append(old["eni_idx"])
        self._eni_changed()
        if vnis:
            self.sync_sg_rules({}, scope=set(vnis))
            self.flush_flows(vnis=vnis)
        for idx in gone:
            self._reset_entries(idx)

    # ---- flows -----------------------------------------------------------------------------
    # A sending flow's time and counters move on in its flow_hot slot (types.h) and reach its
    # `flows` entry only when the long way meets the slot: every read of `flows` here adds what
    # the slot holds.
    def _hot_slots(self, keys: list[bytes] | None = None) -> dict[bytes, bytes]:
        """flow_hot's slots by the `flows` key they hold (raw bytes, undecoded): those of
        `keys`, two sets' lookups each, or (None, or too many keys for that to be cheaper) every
        occupied slot, in one batched read of the table."""
        m = self.map("flow_hot")
        out: dict[bytes, bytes] = {}
        secret, sets = self.config()["port_secret"], m.max_entries // probe.HOT_WAYS
        if keys is None or len(keys) * 2 * probe.HOT_WAYS * 16 > m.max_entries:
            for idx, raw in m.items_raw():
                # only where the datapath would look: a slot placed under another port secret
                # (a test node's) is no flow's now
                s = int.from_bytes(idx, sys.byteorder) // probe.HOT_WAYS
                if any(raw[:16]) and s in probe.hot_sets(secret, raw[:16], sets):
                    out[raw[:16]] = raw
            return out
        for k in keys:
            for i in probe.hot_ways(secret, k, m.max_entries):
                raw = m.lookup_raw(i)
                if raw is not None and raw[:16] == k:
                    out[k] = raw
                    break
        return out

    def _slot_of(self, v: dict[str, Any], raw: bytes | None) -> dict[str, Any] | None:
        """The slot (decoded) that holds a `flows` value's key, if it is the same flow's (the
        same owner, as hot_owner_is in the C); else None."""
        if raw is None:
            return None
        h = self._slot_decoder()(raw)
        if any(h[f] != v[f] for f in ("worker", "vni", "env_addr", "env_port")):
            return None
        return h

    def _slot_decoder(self) -> Callable[[bytes], dict[str, Any]]:
        """flow_hot's values decoded without their key (the caller matched it as bytes): the
        nested key has no flat layout, and decoding it per slot was half of what a sweep of
        100,000 flows cost."""
        if self._slot_decode is None:
            c = self.map("flow_hot").value_codec
            self._slot_decode = fast_decoder(replace(
                c, members=[m for m in c.members if m.name != "key"]))
        return self._slot_decode

    @staticmethod
    def _with_hot(v: dict[str, Any], h: dict[str, Any] | None) -> dict[str, Any]:
        """A `flows` value with what its slot `h` (from _slot_of) adds: its counters, and its
        time when later."""
        if h is None:
            return v
        v = dict(v)
        for f in ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes"):
            v[f] += h[f]
        v["last_seen_ns"] = max(v["last_seen_ns"], h["last_seen_ns"])
        return v

    def _flow_items(self) -> Iterable[tuple[dict[str, Any], dict[str, Any],
                                            dict[str, Any] | None]]:
        """Every `flows` entry as (key, value with its slot's share, the slot or None)."""
        m = self.map("flows")
        items = list(m.items_raw())
        hot = self._hot_slots([k for k, _ in items])
        for k, raw in items:
            v = m.decode_value(raw)
            h = self._slot_of(v, hot.get(k))
            yield m.decode_key(k), self._with_hot(v, h), h

    def flow_value(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """One `flows` entry's value by its key, with its slot's share (what listings show)."""
        m = self.map("flows")
        k = m._key(key)
        raw = m.lookup_raw(k)
        if raw is None:
            return None
        v = m.decode_value(raw)
        return self._with_hot(v, self._slot_of(v, self._hot_slots([k]).get(k)))

    def hot_invalidate(self) -> None:
        """Stop every flow_hot slot at once (hot_gen): after flows were flushed, no packet may
        take the short way on a slot of theirs. Flows that remain go the long way once."""
        g = self.map("hot_gen")
        n = (g.lookup(0) + 1) & 0xFFFFFFFF
        g.update(0, 0 if n == HOT_GEN_BUSY else n)  # wraps to 0, never onto the busy mark

    def set_hot(self, on: bool) -> None:
        """flow_hot on (the default) or off (NODE_F_NO_HOT: established packets go the long way
        and touch no slot), for A/B measurements in one run (bench.hot_ab). Off, slots stay as
        they are (their shares are still added); on again, they are stopped first."""
        cfg = self.config()
        flags = cfg.get("flags", 0)
        if on and flags & NODE_F_NO_HOT:
            # off, the long way changed entries' state and MACs without their slots
            self.hot_invalidate()
        self._set_config_fields({"flags": flags & ~NODE_F_NO_HOT if on else
                                 flags | NODE_F_NO_HOT})

    def flows(self, vni: int | None = None, limit: int | None = None,
              include_expired: bool = True) -> list[dict[str, Any]]:
        """Every flow as one record: the environment's side, the VPC's side, both directions'
        counters (`tx` towards the VPC, `rx` back), its state, idle seconds and whether it is
        live. Entries that are no longer live (expired, reset) are left out unless
        `include_expired`."""
        out = []
        now, timeouts = self.now_ns(), self.timeouts()
        for k, v, _ in self._flow_items():
            if vni is not None and v["vni"] != vni:
                continue
            f = flow_record(k, v, now, timeouts)
            if not include_expired and not f["live"]:
                continue
            out.append(f)
            if limit is not None and len(out) >= limit:
                break
        return out

    def flow_states(self) -> dict[str, int]:
        """Live flows by state name (lifecycle.STATE_NAMES), and "expired": entries kept that
        are no longer live (until taken over, reopened or swept)."""
        counts = Counter({name: 0 for name in lifecycle.STATE_NAMES})
        counts["expired"] = 0
        for f in self.flows():
            counts[f["state"] if f["live"] else "expired"] += 1
        return dict(counts)

    def flow_summary(self) -> dict[str, Any]:
        """One pass over the flow table, for the metrics: its entries, live flows by state (and
        "expired", as flow_states), per ENI (by VNI) the most live flows towards one
        destination (remote, remote port, protocol): the NAT ports that destination holds of
        the ENI's range, the signal before drop_port_exhausted; and `short_way`, the live flows
        whose flow_hot slot their next packet may take (of the current hot_gen). Decodes each
        entry once and builds no records: the whole table is read per call."""
        now, timeouts = self.now_ns(), self.timeouts()
        states = Counter({name: 0 for name in lifecycle.STATE_NAMES})
        states["expired"] = 0
        dests: Counter = Counter()
        n = short = 0
        gen = self.map("hot_gen").lookup(0)
        for key, v, slot in self._flow_items():
            n += 1
            if lifecycle.is_live(key["proto"], v["state"], v["last_seen_ns"], now, timeouts):
                states[lifecycle.state_name(key["proto"], v["state"])] += 1
                dests[(v["vni"], key["remote"], key["remote_port"], key["proto"])] += 1
                short += slot is not None and slot["gen"] == gen
            else:
                states["expired"] += 1
        fullest: dict[int, int] = {}
        for (vni, *_), c in dests.items():
            fullest[vni] = max(fullest.get(vni, 0), c)
        return {"entries": n, "states": dict(states), "fullest_destination": fullest,
                "short_way": short}

    def map_levels(self, known: dict[str, int] | None = None) -> list[dict[str, Any]]:
        """Every pinned map's entries and capacity (an array counts as full: its slots always
        exist). Counting a hash map reads all of it: `known` gives counts already taken (the
        flows' from flow_summary)."""
        out = []
        for name in MAP_NAMES:
            if not (paths.maps_dir(self.node) / name).exists():
                continue  # a map the build that pinned the node did not have (upgrade adds it)
            m = self.map(name)
            n = (known or {}).get(name)
            out.append({"name": name, "entries": m.count() if n is None else n,
                        "max_entries": m.max_entries})
        return out

    def sweep(self, removed: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Remove every entry idle past its timeout, which no packet took over or reopened: what
        keeps listings, counts and the ENIs' limits true. The datapath needs no sweep to give
        ports back (it takes expired entries over). The entries go through the kernel reaper
        (_reap): each is claimed with the takeovers' compare-and-swap from the time read here,
        so one that a packet moved on or took over since is kept (`kept`), never deleted and
        put back; one found gone meanwhile counts as `gone`. `reaper` says which path ran: a
        node pinned by a build without xdp_flow_reap sweeps from user space (`eniplane
        upgrade` adds it). With `removed`, each entry that went is appended to it as a flow
        record (flow_record), as it was when it went: what flow logs end flows with."""
        t0 = time.perf_counter()
        timeouts = self.timeouts()
        now = self.now_ns()
        scanned = 0

        def expired(key: dict, v: dict) -> bool:
            nonlocal scanned
            scanned += 1
            return lifecycle.is_expired(key["proto"], v["state"], v["last_seen_ns"], now, timeouts)

        r = self._remove_flows(expired, swept=True, gone_out=removed, now=now,
                               timeouts=timeouts)
        return {"scanned": scanned, "removed": r.removed, "kept": r.kept, "gone": r.gone,
                "by_state": dict(r.by_state), "reaper": r.reaper,
                "seconds": round(time.perf_counter() - t0, 6)}

    # ---- the reaper (eniplane.c: xdp_flow_reap; types.h: struct reap_batch) -----------------
    def has_reaper(self) -> bool:
        """Whether the node's programs include the kernel reaper (a build from before it has
        neither its pin nor its maps: `eniplane upgrade` adds them)."""
        return ((paths.progs_dir(self.node) / REAPER).exists() and
                (paths.maps_dir(self.node) / "reap_batch").exists())

    def _reap_layout(self) -> dict[str, int]:
        """Where struct reap_batch keeps what _reap writes and reads, from the map's BTF."""
        if self._reap_at is None:
            b = self.map("reap_batch").value_codec
            top = {m.name: m for m in b.members}
            items = top["items"].codec
            item = {m.name: m.offset for m in items.elem.members}
            self._reap_at = {"mode": top["mode"].offset, "n": top["n"].offset,
                             "items": top["items"].offset, "count": items.count,
                             "size": items.elem.size, "key": item["key"], "seen": item["seen"],
                             "result": item["result"], "value": item["value"],
                             "bytes": b.size}
        return self._reap_at

    def _reap(self, batch: list[tuple[bytes, int]], flush: bool) -> list[tuple[int, bytes]]:
        """Run the kernel reaper over (raw key, last_seen_ns as read from the entry itself)
        pairs, at most the batch's capacity: [(REAP_* result, raw entry as it went)]. The
        caller holds the node's reap lock (_remove_flows), so that no other process writes
        the batch map between this one's write, run and read."""
        at = self._reap_layout()
        if len(batch) > at["count"]:
            raise ValueError(f"a reap batch holds {at['count']} entries, not {len(batch)}")
        buf = bytearray(at["bytes"])
        buf[at["mode"]:at["mode"] + 4] = (REAP_MODE_FLUSH if flush else
                                          REAP_MODE_SWEEP).to_bytes(4, sys.byteorder)
        buf[at["n"]:at["n"] + 4] = len(batch).to_bytes(4, sys.byteorder)
        for i, (k, seen) in enumerate(batch):
            o = at["items"] + i * at["size"]
            buf[o + at["key"]:o + at["key"] + len(k)] = k
            buf[o + at["seen"]:o + at["seen"] + 8] = seen.to_bytes(8, sys.byteorder)
        m = self.map("reap_batch")
        if self._reaper_fd is None:
            self._reaper_fd = bpfsys.obj_get(str(paths.progs_dir(self.node) / REAPER))
        m.update(0, bytes(buf))
        rc = bpfsys.prog_test_run(self._reaper_fd, bytes(64), out_size=0)[0]
        out = m.lookup_raw(0)
        if rc != 1:  # XDP_DROP: the batch was taken; XDP_ABORTED: a map or the mode missing
            raise EniplaneError(f"the flow reaper refused its batch (returned {rc})")
        vsize = self.map("flows").value_size
        res = []
        for i in range(len(batch)):
            o = at["items"] + i * at["size"]
            r = int.from_bytes(out[o + at["result"]:o + at["result"] + 4], sys.byteorder)
            res.append((r, out[o + at["value"]:o + at["value"] + vsize]))
        return res

    def reap_stats(self) -> dict[str, int]:
        """What the kernel reaper did with the entries sweeps and flushes chose, since the maps
        were made, as reap_<field of struct reap_stats> (summed over CPUs): reap_removed_sweep,
        reap_removed_flush, reap_kept_changed (a packet or a takeover moved it on between the read
        and the reap: what the user-space path deleted and put back), reap_kept_live (live by
        its flow_hot slot), reap_gone. {} on a node without the reaper."""
        if not (paths.maps_dir(self.node) / "reap_stats").exists():
            return {}
        return {f"reap_{k}": v for k, v in sum_percpu(self.map("reap_stats").lookup(0)).items()}

    def _flush_again(self, entries: list[tuple[bytes, dict, int]],
                     doomed: Callable[[dict, dict], bool], r: "Removal",
                     last: bool) -> list[tuple[bytes, dict, int]]:
        """A flush's entries that changed under the reaper (a packet, a takeover), read again:
        those `doomed` still picks, with their new time, to be reaped again; one whose time is
        0 (a takeover rewriting it, a few instructions from done) after a moment. The rest,
        and everything on the `last` round, count as kept (r.kept), gone ones as gone."""
        m = self.map("flows")
        out: list[tuple[bytes, dict, int]] = []
        for attempt in range(2):
            pending = []
            for k, key, _ in entries:
                raw = m.lookup_raw(k)
                if raw is None:
                    r.gone += 1
                    continue
                v = m.decode_value(raw)
                seen = v["last_seen_ns"]
                if not seen and not attempt and not last:
                    pending.append((k, key, 0))
                elif not last and seen and doomed(key, self._with_hot(
                        v, self._slot_of(v, self._hot_slots([k]).get(k)))):
                    out.append((k, key, seen))
                else:
                    r.kept += 1
            if not pending:
                break
            time.sleep(0.001)
            entries = pending
        return out

    def _remove_flows(self, doomed: Callable[[dict, dict], bool], swept: bool = False,
                      gone_out: list[dict[str, Any]] | None = None,
                      now: int | None = None,
                      timeouts: dict[str, int] | None = None) -> "Removal":
        """Delete the entries that doomed(key, value) picks while the datapath goes on, keeping
        the flow guard true (types.h). Walks are told to go past empty slots before the first
        delete: a flow that opens behind a slot while it goes would otherwise be lost to its own
        walk, and opened twice. Afterwards the table is read again, with whatever opened
        meanwhile, and the guard recomputed from it (probe.resync_guard), for the destinations
        that lost entries. `swept`: a sweep (only entries still not live go; the kernel
        reaper checks that itself, the user-space fallback with `now` and `timeouts`), else a
        flush (live entries go too). Entries go through the kernel reaper (_reap), a batch at
        a time; on a node without it, by lookup-and-delete from here, putting back one that
        a packet made live meanwhile (the old way, which leaves it missing for that moment).
        With `gone_out`, each removed entry's flow_record is appended to it.
        One remover at a time, from the guard's first read to its last write (the node's reap
        lock, which also keeps the reaper's batch map to one writer): two that overlapped
        would each write a guard recomputed only where their own deletes went, and one could
        clear `holes` while the other's empty slots still hide flows behind them."""
        from . import lock

        with lock.exclusive(self.node, REAP_LOCK):
            return self._remove_flows_locked(doomed, swept, gone_out, now, timeouts)

    def _remove_flows_locked(self, doomed: Callable[[dict, dict], bool], swept: bool,
                             gone_out: list[dict[str, Any]] | None, now: int | None,
                             timeouts: dict[str, int] | None) -> "Removal":
        m, g = self.map("flows"), self.map("flow_guard")
        kernel = self.has_reaper()
        start = g.lookup(0)
        added = self._entries_added()
        held: Counter = Counter()  # what the table holds per ENI handle, as this pass saw it
        r = Removal(reaper="kernel" if kernel else "user space")
        touched: set[tuple] = set()
        by_idx: Counter = Counter()
        items = list(m.items_raw())  # the table as it was: what opens meanwhile stays
        hot = self._hot_slots([k for k, _ in items])

        def with_slot(k: bytes, v: dict) -> dict:  # an entry with its slot's share added
            return self._with_hot(v, self._slot_of(v, hot.get(k)))

        chosen: list[tuple[bytes, dict, int]] = []  # (raw key, key, the entry's own time)
        for k, raw in items:
            v = m.decode_value(raw)
            vh = with_slot(k, v)
            key = m.decode_key(k)
            if doomed(key, vh):
                chosen.append((k, key, v["last_seen_ns"]))
            else:
                held[v["eni_idx"]] += 1
        if self._reap_hook is not None:  # tests: what happens between the read and the reap
            self._reap_hook("chosen", chosen)
        if not chosen:
            self._recount_entries(added, held)
            return r
        if not start["holes"]:
            g.update(0, {**g.lookup(0), "holes": 1})

        def went(key: dict, gone: dict) -> None:
            r.removed += 1
            by_idx[gone["eni_idx"]] += 1
            r.by_state[lifecycle.state_name(key["proto"], gone["state"])] += 1
            record = flow_record(key, gone)
            touched.add(probe.dest(record))
            if gone_out is not None:
                gone_out.append(record)

        if kernel:
            size = self._reap_layout()["count"]
            for round_ in range(FLUSH_ROUNDS if not swept else 1):
                again: list[tuple[bytes, dict, int]] = []
                for i in range(0, len(chosen), size):
                    part = chosen[i:i + size]
                    for (k, key, _), (res, raw_gone) in zip(
                            part, self._reap([(k, seen) for k, _, seen in part],
                                             flush=not swept)):
                        if res == REAP_REMOVED:
                            went(key, with_slot(k, m.decode_value(raw_gone)))
                        elif res == REAP_GONE:
                            r.gone += 1
                        elif not swept:  # a flush judges it again as it is now
                            again.append((k, key, 0))
                        else:  # REAP_CHANGED, REAP_LIVE: a packet made it live, it stands
                            r.kept += 1
                    self._count_removed(by_idx)  # a long sweep gives the limits back as it goes
                    by_idx.clear()
                    if self._reap_hook is not None:
                        self._reap_hook("reaped", part)
                chosen = self._flush_again(again, doomed, r, last=round_ == FLUSH_ROUNDS - 1)
                if not chosen:
                    break
        else:
            for k, key, _ in chosen:
                raw_gone = bpfsys.map_lookup_and_delete(m.fd, k, m.value_buf_size)
                if raw_gone is None:
                    r.gone += 1
                    continue
                v = m.decode_value(raw_gone)
                gone = with_slot(k, v)
                if self._reap_hook is not None:  # tests: the entry is out, not yet back
                    self._reap_hook("reaped", [(k, key, v["last_seen_ns"])])
                if swept and not lifecycle.is_expired(key["proto"], gone["state"],
                                                      gone["last_seen_ns"], now, timeouts):
                    try:  # as it was: its slot's share is still in its slot
                        m.update(k, raw_gone, flags=BPF_NOEXIST)
                        r.kept += 1
                        continue
                    except EniplaneError:
                        pass  # a newer entry took the slot: it stands
                went(key, gone)
                if r.removed % 256 == 0:
                    self._count_removed(by_idx)
                    by_idx.clear()
        self._count_removed(by_idx)
        added = self._entries_added()
        mid = g.lookup(0)
        flows = [flow_record(k, v) for k, v in m.items()]
        self._recount_entries(added, Counter(f["eni_idx"] for f in flows))
        # as if the guard had been read just before the table: inserts up to `mid` are in it;
        # the holes flag is the one from before this call (its own says nothing)
        base = {**mid, "holes": start["holes"], "evicted": start["evicted"]}
        cur = {**g.lookup(0), "holes": start["holes"]}
        new = probe.resync_guard(flows, dict(self.map("enis").items()),
                                 self.config()["port_secret"], base, cur, touched,
                                 m.max_entries, r.removed)
        new["swept"] = start["swept"] + (r.removed if swept else 0)
        g.update(0, new)
        return r

    def find_flow(self, worker: str, vni: int, env_addr: str, env_port: int, remote: str,
                  remote_port: int, proto: int) -> dict[str, Any] | None:
        """The flow an environment's packet belongs to, found the way the datapath finds it:
        along the probe of its ENI's port range."""
        eni = self.map("enis").lookup(vni)
        if eni is None:
            return None
        for port in probe.probe_ports(self.config()["port_secret"], eni["port_lo"], eni["port_hi"],
                                worker, vni, env_addr, env_port, remote, remote_port, proto):
            k = {"vpc_idx": eni["vpc_idx"], "proto": proto, "eni_addr": eni["addr"],
                 "remote": remote, "eni_port": port, "remote_port": remote_port}
            v = self.flow_value(k)
            if v and (v["worker"], v["vni"], v["env_addr"], v["env_port"]) == \
                    (worker, vni, env_addr, env_port):
                return flow_record(k, v, self.now_ns(), self.timeouts())
        return None

    def flush_flows(self, vnis: Collection[int] | None = None,
                    workers: Collection[str] | None = None,
                    pairs: Collection[tuple[str, int]] | None = None) -> int:
        """Remove flows: all, or those of some ENIs (by VNI), workers, or (worker, VNI) pairs.
        Returns how many. The guard is then checked only where flows went (_remove_flows)."""
        def doomed(_: dict, v: dict) -> bool:
            return ((vnis is None or v["vni"] in vnis) and
                    (workers is None or v["worker"] in workers) and
                    (pairs is None or (v["worker"], v["vni"]) in pairs))

        n = self._remove_flows(doomed).removed
        if n:
            self.hot_invalidate()
        return n

    def guard_resync(self, flows: list[dict[str, Any]] | None = None,
                     touched: set[tuple] | None = None, start: dict | None = None,
                     deleted: int = 0, swept: int = 0) -> dict:
        """After flows were deleted from here: write the flow_guard that probe.resync_guard
        computes. `flows` is the table as it is now (read here if not given); `touched` the
        destinations that lost flows (probe.dest; None checks every flow); `start` the guard as
        it was before the table was read (read here if not given); `deleted` how many entries
        this caller removed (the rest of what went, the LRU evicted: probe.resync_guard)."""
        g = self.map("flow_guard")
        if start is None:
            start = g.lookup(0)
        if flows is None:
            flows = self.flows()
        enis = dict(self.map("enis").items())
        new = probe.resync_guard(flows, enis, self.config()["port_secret"], start, g.lookup(0),
                                 touched, self.map("flows").max_entries,
                                 deleted)
        new["swept"] = start.get("swept", 0) + swept
        g.update(0, new)
        return new

    # ---- counters --------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Every counter of struct stats, summed over CPUs (one map read: cheap enough to take
        around every test packet)."""
        return sum_percpu(self.map("stats").lookup(0))

    def flows_evicted(self) -> int:
        """The flows the LRU took to make room, which no hook reports: evictions earlier recounts
        found, plus inserts minus deletes minus the entries now. Counts the whole table: for
        `eniplane stats`, not for every packet."""
        g = self.map("flow_guard").lookup(0)
        return g["evicted"] + max(0, g["count"] - self.map("flows").count())

    def flows_swept(self) -> int:
        """Expired entries the sweeper removed so far (flow_guard.swept)."""
        return self.map("flow_guard").lookup(0)["swept"]

    def eni_counter_names(self) -> list[str]:
        """The names of the per-ENI counters, in the datapath's order."""
        return self.map("eni_stats").value_fields

    def eni_stats(self, vni: int | None = None) -> dict[int, dict[str, int]]:
        """Per-ENI counters keyed by VNI (the map itself is indexed by the ENI's handle)."""
        m = self.map("eni_stats")
        out = {}
        for v, e in self.map("enis").items():
            if vni is None or v == vni:
                out[v] = sum_percpu(m.lookup(e["eni_idx"]))
        return out


def publish_slot(slots: Any, slot: int, owner: str, value: dict | None) -> None:
    """Write a direct-mapped slot (worker_slots, vpc_if_slots) that the datapath takes whole
    when its `owner` field names what it looks for, and otherwise passes over to the hash map
    behind it. A map update copies the value in place, so a packet may read one half written:
    the new owner with the old or a half-copied rest (a worker's MAC and flags, an interface's
    VPC). So the owner goes to none first, the rest changes under none, and the owner comes
    last, with a rest that is already whole; `value` None leaves the slot empty."""
    cur = slots.lookup(slot)
    none = "0.0.0.0" if owner == "addr" else 0
    if cur[owner] != none:
        slots.update(slot, {**cur, owner: none})
    if value is None:
        slots.update(slot, b"")
        return
    if {**cur, owner: none} != {**value, owner: none}:
        slots.update(slot, {**value, owner: none})
    slots.update(slot, value)


def _worker_slot(ip: str, slots: int) -> int:
    """worker_slots' index for a worker: its address in host order, modulo the slot count."""
    return int(ipaddress.IPv4Address(ip)) % slots


def _next_gen(gen: int) -> int:
    """The next ENI generation; 0 never counts (an empty cache slot has it)."""
    return gen % 0xFFFFFFFF + 1


def flow_record(k: dict[str, Any], v: dict[str, Any], now_ns: int | None = None,
                timeouts: dict[str, int] | None = None) -> dict[str, Any]:
    """One flow entry as a record; with the clock and the timeouts, also how long it has been
    idle and whether it is live (lifecycle.is_live)."""
    rec = {"worker": v["worker"], "vni": v["vni"], "env_addr": v["env_addr"],
           "env_port": v["env_port"], "remote": k["remote"], "remote_port": k["remote_port"],
           "proto": k["proto"], "vpc_idx": k["vpc_idx"], "eni_addr": k["eni_addr"],
           "nat_port": k["eni_port"], "eni_idx": v["eni_idx"], "env_mac": v["env_mac"],
           "tunnel": v["tunnel"], "state_bits": v["state"],
           "state": lifecycle.state_name(k["proto"], v["state"]), "tx_packets": v["tx_packets"],
           "tx_bytes": v["tx_bytes"], "rx_packets": v["rx_packets"], "rx_bytes": v["rx_bytes"],
           "last_seen_ns": v["last_seen_ns"]}
    if now_ns is not None and timeouts is not None:
        rec["idle_s"] = round(max(0, now_ns - v["last_seen_ns"]) / 1e9, 3)
        rec["live"] = lifecycle.is_live(k["proto"], v["state"], v["last_seen_ns"], now_ns,
                                        timeouts)
    return rec
