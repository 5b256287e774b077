"""User space's mirror of the datapath's port probe and flow guard, as pure functions.

Contract: mirrors bpf/eniplane.c (`port_hash`, the probe's start, `probe_port`, `hot_sets`) and
bpf/consts.h (PORT_TRIES, FLOW_SAFE_ENTRIES), and computes the flow_guard value of bpf/types.h
after flows were deleted. Nothing here reads or writes a map: datapath.py reads the maps, calls
these and writes the result. tests/datapath/test_probe.py holds port_hash/probe_ports equal to
the kernel's (flows sit where these functions say), tests/datapath/test_flow_hot.py hot_sets,
tests/unit/test_consts.py holds the constants equal to consts.h. A flow here is a record of
datapath.flow_record; an ENI is an `enis` map value.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Any, Iterable, Mapping

PORT_TRIES = 16  # consts.h
HOT_WAYS = 8  # consts.h: the slots of one flow_hot set


LRU_LOCAL_FREE_TARGET = 128  # consts.h, after the kernel's bpf_lru_list.c


def flow_safe_entries(max_flows: int, ncpus: int | None = None) -> int:
    """FLOW_SAFE_ENTRIES of consts.h for a table of this size on this many possible CPUs
    (below zero for a table too small to rule eviction out: holes are then possible at once)."""
    if ncpus is None:
        from .bpfsys import possible_cpus
        ncpus = possible_cpus()
    return max_flows - 2 * LRU_LOCAL_FREE_TARGET * ncpus - LRU_LOCAL_FREE_TARGET


def _word(raw: bytes) -> int:
    """A field as the datapath loads it: its bytes in memory order, read in host order."""
    return int.from_bytes(raw, sys.byteorder)


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF


def _scramble(k: int) -> int:
    k = _rotl((k * 0xCC9E2D51) & 0xFFFFFFFF, 15)
    return (k * 0x1B873593) & 0xFFFFFFFF


def port_hash(secret: int, worker: str, vni: int, env_addr: str, env_port: int, remote: str,
              remote_port: int, proto: int) -> int:
    """port_hash of eniplane.c (before it is mapped onto a range by probe_start)."""
    words = (_word(ipaddress.IPv4Address(worker).packed), vni | proto << 24,
             _word(ipaddress.IPv4Address(env_addr).packed),
             _word(ipaddress.IPv4Address(remote).packed),
             (_word(env_port.to_bytes(2, "big")) << 16) | _word(remote_port.to_bytes(2, "big")))
    h = secret
    for w, r in zip(words, (0, 7, 13, 19, 26)):
        h ^= _rotl(_scramble(w), r) if r else _scramble(w)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def probe_start(h: int, rng: int) -> int:
    """Where in a range of `rng` ports a probe with hash `h` starts (multiply-shift)."""
    return (h * rng) >> 32


def probe_ports(secret: int, port_lo: int, port_hi: int, worker: str, vni: int, env_addr: str,
                env_port: int, remote: str, remote_port: int, proto: int) -> list[int]:
    """The ports a flow's probe visits, in the order the datapath walks them (probe_port)."""
    rng = port_hi - port_lo + 1
    start = probe_start(port_hash(secret, worker, vni, env_addr, env_port, remote, remote_port,
                                  proto), rng)
    return [port_lo + (start + i) % rng for i in range(min(rng, PORT_TRIES))]


_M64 = (1 << 64) - 1


def hot_sets(secret: int, key_raw: bytes, sets: int) -> tuple[int, int]:
    """hot_sets of eniplane.c: the two sets of flow_hot (HOT_WAYS neighbouring slots each) that
    a flow's slot may sit in, first choice first, from its `flows` key as the map holds it (16
    bytes) and the number of sets (a power of two)."""
    w = [int.from_bytes(key_raw[i:i + 4], sys.byteorder) for i in range(0, 16, 4)]
    a = ((((w[0] ^ secret) << 32) | w[1]) * 0x9E3779B97F4A7C15) & _M64
    b = (((w[2] << 32) | w[3]) * 0xC2B2AE3D27D4EB4F) & _M64
    h = a ^ b
    m = ((h ^ (h >> 29)) * 0xBF58476D1CE4E5B9) & _M64
    return (h >> 32) & (sets - 1), (m >> 32) & (sets - 1)


def hot_ways(secret: int, key_raw: bytes, slots: int) -> list[int]:
    """The flow_hot slots (their indices) that a flow key may sit in, in a table of `slots`:
    its first set's, then its second's (once, when both are one set)."""
    out: list[int] = []
    for s in dict.fromkeys(hot_sets(secret, key_raw, slots // HOT_WAYS)):
        out.extend(range(s * HOT_WAYS, (s + 1) * HOT_WAYS))
    return out


def dest(f: Mapping[str, Any]) -> tuple:
    """What a flow's port is unique within: its ENI address (in its VPC) and destination."""
    return (f["vpc_idx"], f["proto"], f["eni_addr"], f["remote"], f["remote_port"])


def _slot(f: Mapping[str, Any], port: int) -> tuple:
    return dest(f) + (port,)


def flow_probe(f: Mapping[str, Any], enis: Mapping[int, Mapping[str, Any]],
               secret: int) -> list[int]:
    """A flow's probe, as the datapath walks it (empty for a flow whose ENI is gone)."""
    eni = enis.get(f["vni"])
    return [] if eni is None else probe_ports(
        secret, eni["port_lo"], eni["port_hi"], f["worker"], f["vni"], f["env_addr"],
        f["env_port"], f["remote"], f["remote_port"], f["proto"])


def resync_guard(flows: list[Mapping[str, Any]], enis: Mapping[int, Mapping[str, Any]],
                 secret: int, start: Mapping[str, int], now: Mapping[str, int],
                 touched: Iterable[tuple] | None, max_flows: int,
                 deleted: int = 0) -> dict[str, int]:
    """The flow_guard value after flows were deleted: recount them, record how deep along its
    probe each one sits, and decide whether a walk along a probe may still stop at the first
    empty slot. It may unless some remaining flow sits behind a slot that is empty now, or the
    table is so full that the LRU may evict.

    `flows` is the table as it is now. With `touched`, the destinations (`dest`) that lost
    flows, only flows towards those are checked, and the depths recorded so far stand: enough
    while the guard had no holes before, since a hole can only be where a flow went. Otherwise
    every flow is checked. The datapath keeps inserting meanwhile: what it added to the guard
    between `start` (read before the table was) and `now` (read after) is carried over.

    The guard's count is inserts minus deletes since the last recount; what the table holds
    less than that, beyond the `deleted` entries the caller removed, the LRU evicted: added up
    in `evicted`, so that table pressure stays visible (flows_evicted in `stats`)."""
    incremental = touched is not None and not start["holes"]
    if incremental:
        touched = set(touched or ())
        check = [f for f in flows if dest(f) in touched]
    else:
        check = list(flows)
    probes = [flow_probe(f, enis, secret) for f in check]
    # how many ports of its probe come before a flow's own; one outside its probe (its ENI
    # gone or changed) is unreachable: count it as deep as walks go, assume nothing of it
    depths = [p.index(f["nat_port"]) if f["nat_port"] in p else PORT_TRIES - 1
              for f, p in zip(check, probes)]
    taken = {_slot(f, f["nat_port"]) for f in check}
    behind = any(_slot(f, port) not in taken
                 for f, p, d in zip(check, probes, depths) for port in p[:d])
    bits = start["depths"] if incremental else 0
    for d in depths:
        bits |= 1 << min(d, PORT_TRIES - 1)
    count = len(flows) + max(0, now["count"] - start["count"])
    bits |= now["depths"] & ~start["depths"]
    full = count >= flow_safe_entries(max_flows)
    holes = count > 0 and (full or behind or bool(now["holes"] and not start["holes"]))
    evicted = start.get("evicted", 0) + max(0, start["count"] - deleted - len(flows))
    return {"count": count, "holes": int(holes), "depths": bits if count else 0,
            "evicted": evicted}
