"""The compiled security-group form must answer exactly like the rules read one by one."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from eniplane.sgcompile import Rule, allows, compile_rules, merge


def lpm_allows(compiled, proto: int, dst: str, port: int) -> bool:
    """What the datapath does: longest matching prefix, then the port ranges found there."""
    addr = ipaddress.IPv4Address(dst)
    best = None
    for (p, cidr), ranges in compiled.items():
        if p == proto and addr in cidr and (best is None or cidr.prefixlen > best[0].prefixlen):
            best = (cidr, ranges)
    return best is not None and any(lo <= port <= hi for lo, hi in best[1])


def test_merge_joins_overlapping_and_adjacent():
    assert merge([(10, 20), (15, 30), (31, 31), (40, 50)]) == [(10, 31), (40, 50)]


def test_union_of_groups_and_nested_cidrs():
    rules = [Rule.of("tcp", "10.0.0.0/16", (80, 80)), Rule.of("tcp", "10.0.5.0/24", (443, 443)),
             Rule.of("udp", "10.0.0.10/32", (7, 7)), Rule.of("icmp", "0.0.0.0/0")]
    c = compile_rules(rules)
    assert lpm_allows(c, 6, "10.0.5.9", 80)  # the /16 rule still applies inside the /24
    assert lpm_allows(c, 6, "10.0.5.9", 443)
    assert not lpm_allows(c, 6, "10.0.6.9", 443)
    assert not lpm_allows(c, 17, "10.0.0.11", 7)
    assert lpm_allows(c, 1, "8.8.8.8", 0)


def test_all_protocols_rule_covers_every_port():
    c = compile_rules([Rule.of("all", "10.0.0.0/8")])
    assert lpm_allows(c, 6, "10.1.2.3", 1) and lpm_allows(c, 17, "10.1.2.3", 65535)


def test_no_rules_denies_everything():
    assert compile_rules([]) == {}


cidrs = st.builds(lambda a, p: str(ipaddress.IPv4Network((a, p), strict=False)),
                  st.sampled_from([0x0A000000, 0x0A000500, 0x0A00050A, 0xC0A80000, 0]),
                  st.integers(0, 32))
ports = st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(lambda t: tuple(sorted(t)))
rules = st.builds(Rule.of, st.sampled_from(["tcp", "udp", "icmp", "all"]), cidrs, ports)


@settings(max_examples=300, deadline=None)
@given(st.lists(rules, max_size=12), st.sampled_from([1, 6, 17]),
       st.sampled_from(["10.0.5.10", "10.0.0.1", "192.168.3.4", "10.0.5.11"]),
       st.integers(0, 65535))
def test_compiled_equals_rule_by_rule(rs, proto, dst, port):
    port = 0 if proto == 1 else port
    assert lpm_allows(compile_rules(rs), proto, dst, port) == allows(rs, proto, dst, port)
