"""events.py: the settings' checks and the pure decoding of what an event carries."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from eniplane import events
from eniplane.btf import IntCodec, Member, StructCodec, ArrayCodec
from eniplane.errors import InvalidInput


def outer(inner, vni=100, dport=4789, vlan=False):
    eth = Ether(src="02:00:00:00:00:11", dst="02:00:00:00:00:01")
    if vlan:
        eth = eth / Dot1Q(vlan=7)
    return bytes(eth / IP(src="100.64.0.11", dst="100.64.0.1") / UDP(sport=40000, dport=dport)
                 / VXLAN(vni=vni, flags=0x08) / inner)


INNER = Ether() / IP(src="172.16.0.2", dst="10.0.0.10") / TCP(sport=33000, dport=22)


@pytest.mark.parametrize("vlan", [False, True])
def test_tunnel_frame_gives_worker_vni_and_inner_tuple(vlan):
    got = events.parse_frame(outer(INNER, vni=4242, vlan=vlan))
    assert got == {"worker": "100.64.0.11", "tunnel": "vxlan", "vni": 4242, "src": "172.16.0.2",
                   "dst": "10.0.0.10", "proto": "tcp", "sport": 33000, "dport": 22}


def test_geneve_options_are_skipped():
    # GENEVE: version 0, 2 words of options, protocol 0x6558, VNI 300
    hdr = bytes([0x02, 0, 0x65, 0x58, 0, 0x01, 0x2C, 0]) + b"\0" * 8
    raw = bytes(Ether() / IP(src="100.64.0.11", dst="100.64.0.1") / UDP(sport=1, dport=6081)) \
        + hdr + bytes(INNER)
    got = events.parse_frame(raw)
    assert (got["tunnel"], got["vni"], got["dport"], got["src"]) == ("geneve", 300, 22, "172.16.0.2")


def test_cut_short_frames_say_what_they_can():
    full = outer(INNER)
    assert events.parse_frame(full[:45]) == {"worker": "100.64.0.11"}
    assert events.parse_frame(full[:50 + 10]) == {"worker": "100.64.0.11", "tunnel": "vxlan",
                                                  "vni": 100}
    assert events.parse_frame(full[:5]) == {}


def test_plain_frames_vpc_side():
    raw = bytes(Ether() / IP(src="10.0.0.10", dst="10.0.1.4") / ICMP(type=3, code=1))
    assert events.parse_frame(raw) == {"src": "10.0.0.10", "dst": "10.0.1.4", "proto": "icmp",
                                       "icmp_type": 3, "icmp_code": 1}
    assert events.parse_frame(bytes(Ether() / ARP())) == {"arp": True}
    assert events.parse_frame(outer(Ether() / ARP())) == {
        "worker": "100.64.0.11", "tunnel": "vxlan", "vni": 100, "arp": True}


def test_later_fragments_have_no_ports():
    raw = bytes(Ether() / IP(src="1.2.3.4", dst="5.6.7.8", frag=100, proto=17) / (b"\0" * 8))
    assert "sport" not in events.parse_frame(raw)


def _layout(snap=16) -> StructCodec:
    """struct event as BTF would describe it (the test's own rendering, for decode only)."""
    u = IntCodec
    m = [Member("ts_ns", 0, u(8)), Member("ifindex", 8, u(4)), Member("len", 12, u(4)),
         Member("reason", 16, u(2)), Member("kind", 18, u(1)), Member("direction", 19, u(1)),
         Member("cpu", 20, u(2)), Member("cap_len", 22, u(2)),
         Member("data", 24, ArrayCodec(u(1), snap))]
    return StructCodec(24 + snap, m, "event")


def test_decode_a_record():
    frame = bytes(range(10))
    raw = (7).to_bytes(8, "little") + (3).to_bytes(4, "little") + (99).to_bytes(4, "little") + \
        (1).to_bytes(2, "little") + bytes([1, 1]) + (5).to_bytes(2, "little") + \
        (10).to_bytes(2, "little") + frame.ljust(16, b"\0")
    ev = events.decode(raw, _layout(), ["xdp_aborted", "drop_x"])
    assert ev["frame"] == frame.hex()
    assert {k: ev[k] for k in ("ts_ns", "ifindex", "len", "reason", "kind", "direction", "cpu")} \
        == {"ts_ns": 7, "ifindex": 3, "len": 99, "reason": "drop_x", "kind": "drop",
            "direction": "vpc", "cpu": 5}
    assert "drop_x on vpc if 3 cpu 5" in events.summary(ev)


def test_settings_checks():
    assert events.check_settings({"drops": False, "rate": 5}) == {"drops": False, "rate": 5}
    for bad in ({"drops": 1}, {"rate": -1}, {"rate": True}, {"nope": 1}, {"rate": 2 ** 32}):
        with pytest.raises(InvalidInput):
            events.check_settings(bad)
