"""The node's pinned maps, programmed in the datapath's own terms.

Contract: this is the one place that writes configuration into the maps: `up` and the tests use it
now, the control plane's reconcile uses it too. Layouts come from the maps' BTF (maps.py); field
names here are the C field names of types.h. Writes that depend on a network namespace (tx_ports
resolves ifindexes in the writer's namespace) take the node's namespace.
"""

from __future__ import annotations

from typing import Any, Collection, Iterable

from . import paths
from .maps import PinnedMap, sum_percpu
from .errors import InvalidInput
from .netlink import in_netns
from .sgcompile import Rule, compile_rules

MAP_NAMES = ("config", "workers", "enis", "eni_addrs", "vpcs", "vpc_ifs", "sg_rules",
             "flows_fwd", "flows_rev", "rev_guard", "stats", "eni_stats", "tx_ports")
VPC_F_GW_MAC, VPC_F_ACTIVE = 1, 2
TX_SLOT_FABRIC = 0


class Datapath:
    def __init__(self, node: str, netns: str | None = None):
        self.node = node
        self.netns = netns
        self._maps: dict[str, PinnedMap] = {}

    def __enter__(self) -> "Datapath":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()

    def map(self, name: str) -> PinnedMap:
        if name not in self._maps:
            self._maps[name] = PinnedMap(str(paths.maps_dir(self.node) / name))
        return self._maps[name]

    # ---- node ------------------------------------------------------------------------------
    def set_config(self, fabric_ip: str, fabric_ifindex: int, fabric_mac: str, gateway_mac: str,
                   fabric_mtu: int) -> None:
        self.map("config").update(0, {"fabric_ip": fabric_ip, "fabric_ifindex": fabric_ifindex,
                                      "fabric_mac": fabric_mac, "gateway_mac": gateway_mac,
                                      "fabric_mtu": fabric_mtu})
        self.set_tx_port(TX_SLOT_FABRIC, fabric_ifindex)

    def config(self) -> dict:
        return self.map("config").lookup(0)

    def set_tx_port(self, slot: int, ifindex: int) -> None:
        with in_netns(self.netns):
            self.map("tx_ports").update(slot, ifindex)

    def del_tx_port(self, slot: int) -> None:
        self.map("tx_ports").delete(slot)

    # ---- workers ---------------------------------------------------------------------------
    def add_worker(self, ip: str) -> None:
        m = self.map("workers")
        if m.lookup(ip) is None:  # keep a MAC already learned
            m.update(ip, {"mac": "00:00:00:00:00:00"})

    def del_workers(self, ips: Collection[str]) -> None:
        """Established flows do not look the worker up again: its flows go with it (one pass
        over the flow tables for all the workers)."""
        for ip in ips:
            self.map("workers").delete(ip)
        if ips:
            self.flush_flows(workers=ips)

    # ---- VPC attachments -------------------------------------------------------------------
    def set_vpc(self, ifindex: int, vpc_idx: int, gateway_ip: str, if_mac: str, tx_slot: int,
                gateway_mac: str | None = None) -> None:
        """vpcs[vpc_idx] and vpc_ifs[ifindex]; a gateway MAC already learned for the same
        gateway is kept unless one is given."""
        m = self.map("vpcs")
        old = m.lookup(vpc_idx)
        flags = VPC_F_ACTIVE
        if gateway_mac is not None:
            flags |= VPC_F_GW_MAC
        elif old and old["flags"] & VPC_F_GW_MAC and old["gateway_ip"] == gateway_ip and \
                old["ifindex"] == ifindex:
            gateway_mac, flags = old["gateway_mac"], flags | VPC_F_GW_MAC
        if old and old["flags"] & VPC_F_ACTIVE and old["ifindex"] != ifindex:
            self.map("vpc_ifs").delete(old["ifindex"])
        self.set_tx_port(tx_slot, ifindex)
        m.update(vpc_idx, {"ifindex": ifindex, "gateway_ip": gateway_ip,
                           "gateway_mac": gateway_mac or "00:00:00:00:00:00", "if_mac": if_mac,
                           "flags": flags, "tx_slot": tx_slot})
        self.map("vpc_ifs").update(ifindex, vpc_idx)

    def vpc(self, vpc_idx: int) -> dict | None:
        v = self.map("vpcs").lookup(vpc_idx)
        return v if v and v["flags"] & VPC_F_ACTIVE else None

    def vpcs(self) -> dict[int, dict]:
        return {k: v for k, v in self.map("vpcs").items() if v["flags"] & VPC_F_ACTIVE}

    def del_vpc(self, vpc_idx: int) -> None:
        old = self.vpc(vpc_idx)
        if old:
            self.del_tx_port(old["tx_slot"])
            self.map("vpc_ifs").delete(old["ifindex"])
            self.map("vpcs").update(vpc_idx, b"")  # array slots cannot go: zero = inactive

    # ---- ENIs ------------------------------------------------------------------------------
    def set_eni(self, vni: int, eni_idx: int, vpc_idx: int, vpc_ifindex: int, addr: str,
                port_lo: int = 1024, port_hi: int = 65535) -> None:
        old = self.map("enis").lookup(vni)
        if old and (old["vpc_idx"], old["addr"]) != (vpc_idx, addr):
            self.map("eni_addrs").delete({"vpc_idx": old["vpc_idx"], "addr": old["addr"]})
        if not 0 < eni_idx < self.map("eni_stats").max_entries:
            raise InvalidInput(f"ENI handle {eni_idx} is outside 1-"
                               f"{self.map('eni_stats').max_entries - 1} (MAX_ENIS)")
        if old and old["eni_idx"] != eni_idx:
            self.map("eni_stats").update(old["eni_idx"], b"")
        self.map("enis").update(vni, {"eni_idx": eni_idx, "vpc_idx": vpc_idx,
                                      "vpc_ifindex": vpc_ifindex, "addr": addr,
                                      "port_lo": port_lo, "port_hi": port_hi})
        self.map("eni_addrs").update({"vpc_idx": vpc_idx, "addr": addr},
                                     {"vni": vni, "eni_idx": eni_idx})

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
        for vni in vnis:
            old = self.map("enis").lookup(vni)
            if old:
                self.map("eni_addrs").delete({"vpc_idx": old["vpc_idx"], "addr": old["addr"]})
                self.map("enis").delete(vni)
                self.map("eni_stats").update(old["eni_idx"], b"")
        if vnis:
            self.sync_sg_rules({}, scope=set(vnis))
            self.flush_flows(vnis=vnis)

    # ---- flows -----------------------------------------------------------------------------
    def flows(self, vni: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Forward entries joined with their reverse halves (when present)."""
        rev = self.map("flows_rev")
        out = []
        for k, v in self.map("flows_fwd").items():
            if vni is not None and k["vni"] != vni:
                continue
            r = rev.lookup({"vpc_idx": v["vpc_idx"], "eni_addr": v["eni_addr"],
                            "remote": k["dst"], "eni_port": v["nat_port"],
                            "remote_port": k["dport"], "proto": k["proto"]})
            out.append({"key": k, "fwd": v, "rev": r, "eni_addr": v["eni_addr"]})
            if limit is not None and len(out) >= limit:
                break
        return out

    def flush_flows(self, vnis: Collection[int] | None = None,
                    workers: Collection[str] | None = None) -> int:
        """Remove flows (both halves): all, or those of some ENIs (by VNI) or workers."""
        def match(d: dict) -> bool:
            return (vnis is None or d["vni"] in vnis) and (workers is None or d["worker"] in workers)

        n = 0
        fwd, rev = self.map("flows_fwd"), self.map("flows_rev")
        for k in list(fwd.keys_raw()):
            if match(fwd.key_codec.decode(k)):
                n += fwd.delete(k)
        for k in list(rev.keys_raw()):
            v = rev.lookup(k)
            if v is not None and match(v):
                rev.delete(k)
        self.guard_resync()
        return n

    def guard_resync(self) -> dict:
        """After reverse entries were deleted from here: recount them, clear `danger` and start
        a new epoch, so that every forward entry checks its reverse half once more (rev_guard in
        types.h says why the datapath may otherwise skip that check)."""
        g = self.map("rev_guard")
        old = g.lookup(0)
        new = {"rev_count": sum(1 for _ in self.map("flows_rev").keys_raw()),
               "epoch": (old["epoch"] + 1) & 0xFFFFFFFF, "danger": 0}
        g.update(0, new)
        return new

    # ---- counters --------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        return sum_percpu(self.map("stats").lookup(0))

    def eni_stats(self, vni: int | None = None) -> dict[int, dict[str, int]]:
        """Per-ENI counters keyed by VNI (the map itself is indexed by the ENI's handle)."""
        m = self.map("eni_stats")
        out = {}
        for v, e in self.map("enis").items():
            if vni is None or v == vni:
                out[v] = sum_percpu(m.lookup(e["eni_idx"]))
        return out

