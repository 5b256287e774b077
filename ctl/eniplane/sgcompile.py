"""Compile security-group egress rules into the datapath's sg_rules LPM entries.

Contract: pure function, no kernel. AWS semantics: a packet is allowed when any rule of any group
allows it. For each protocol the datapath handles (TCP, UDP, ICMP) and each distinct rule CIDR C,
the entry for C holds the merged port ranges of every rule whose CIDR contains C. All CIDRs that
contain a destination are nested, so the longest one that matches (what an LPM lookup returns)
already carries the ranges of every rule that applies: one lookup decides, exactly.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# Protocol names as rules and flows show them, and their numbers in the IP header (0: any). Every
# other protocol table derives from this one; tests/unit/test_consts.py holds it to the C.
PROTO_NUMBERS = {"all": 0, "icmp": 1, "tcp": 6, "udp": 17}
PROTO_NAMES = {v: k for k, v in PROTO_NUMBERS.items()}
TCP, UDP, ICMP = PROTO_NUMBERS["tcp"], PROTO_NUMBERS["udp"], PROTO_NUMBERS["icmp"]
PORT_PROTOS = (TCP, UDP)  # the ones whose rules name ports
DATAPATH_PROTOS = (TCP, UDP, ICMP)  # the ones parse.h classifies
ALL_PORTS = (0, 65535)


@dataclass(frozen=True)
class Rule:
    proto: int  # 0 = all
    cidr: ipaddress.IPv4Network
    port_lo: int = 0
    port_hi: int = 65535

    @classmethod
    def of(cls, proto: str | int, cidr: str, ports: tuple[int, int] | None = None) -> "Rule":
        p = PROTO_NUMBERS[proto] if isinstance(proto, str) else int(proto)
        lo, hi = ports if ports and p in PORT_PROTOS else ALL_PORTS
        return cls(p, ipaddress.IPv4Network(cidr, strict=False), lo, hi)


def merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def compile_rules(rules: list[Rule]) -> dict[tuple[int, ipaddress.IPv4Network], list[tuple[int, int]]]:
    """{(protocol, prefix): merged port ranges} for the union of `rules`."""
    out: dict[tuple[int, ipaddress.IPv4Network], list[tuple[int, int]]] = {}
    for proto in DATAPATH_PROTOS:
        applicable = [r for r in rules if r.proto in (0, proto)]
        for cidr in {r.cidr for r in applicable}:
            ranges = [(r.port_lo, r.port_hi) if r.proto in PORT_PROTOS else ALL_PORTS
                      for r in applicable if cidr.subnet_of(r.cidr)]
            out[(proto, cidr)] = merge(ranges)
    return out


def allows(rules: list[Rule], proto: int, dst: str, port: int) -> bool:
    """The reference answer, rule by rule: what the compiled form must agree with."""
    addr = ipaddress.IPv4Address(dst)
    for r in rules:
        if r.proto not in (0, proto) or addr not in r.cidr:
            continue
        if r.proto in PORT_PROTOS and not (r.port_lo <= port <= r.port_hi):
            continue
        return True
    return False
