"""IP fragments both ways (RFC 791): the first fragment carries the ports, opens or finds the
flow (security groups judged on it) and leaves it for the later ones, which are translated by
address alone. Later fragments without a first, overlapping the first, or tiny first fragments
(RFC 1858) are dropped and counted. Expected bytes come from scapy: its fragmenter makes the
input, its reassembler checks that what leaves is the translated datagram whole."""

from __future__ import annotations

import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, defragment, fragment
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from conftest import (ENI_A, ENV_IP, ENV_MAC, GATEWAY_MAC, GW_A, SERVER, VNI_A, WORKER,
                      tunnel)

FRAG_LIFE_S = 2  # consts.h FRAG_TIMEOUT_NS


def env_datagram(l4, ident: int, **ip) -> IP:
    return IP(src=ENV_IP, dst=SERVER, id=ident, **ip) / l4


def udp_fragments(sport: int, ident: int, dport: int = 7) -> list[IP]:
    """A 3,000-byte UDP datagram from the environment in three fragments."""
    return fragment(env_datagram(UDP(sport=sport, dport=dport) / Raw(b"f" * 3000), ident=ident),
                    fragsize=1200)


def send(env, ip: IP, vni: int = VNI_A):
    return env.run("xdp_fabric", bytes(tunnel(Ether(src=ENV_MAC, dst=GATEWAY_MAC) / ip,
                                              vni=vni)))


def checksum_ok(ip: IP) -> bool:
    """The transport checksum of a whole datagram, as scapy computes it from scratch."""
    p = IP(bytes(ip))
    l4 = p.payload
    got = l4.chksum
    del l4.chksum
    return IP(bytes(p)).payload.chksum == got


def whole(frags: list[bytes]) -> IP:
    out = defragment([IP(f) for f in frags])
    assert len(out) == 1, out
    return out[0]


def test_a_fragmented_udp_datagram_goes_out_whole_and_translated(env):
    data = bytes(range(256)) * 16  # 4,096 bytes
    dgram = env_datagram(UDP(sport=42000, dport=7) / Raw(data), ident=0x1001)
    frags = fragment(dgram, fragsize=1200)
    assert len(frags) == 4
    outs = []
    for i, f in enumerate(frags):
        got, out, d = send(env, f)
        want = "fwd_new_flow" if i == 0 else "fwd_fragment"
        assert (got, d.get(want)) == ("REDIRECT", 1), (i, d)
        o = Ether(out)
        assert (o[Ether].src, o[Ether].dst) == (env.vpc_if["vpca"]["mac"], GW_A)
        # each later fragment is the environment's own, but for the source and the TTL
        if i:
            exp = IP(bytes(f))
            exp.src, exp.ttl = ENI_A, f.ttl - 1
            del exp.chksum
            assert bytes(o[IP]) == bytes(IP(bytes(exp))), i
        outs.append(bytes(o[IP]))
    dg = whole(outs)
    nat = IP(outs[0])[UDP].sport
    assert (dg.src, dg.dst, dg[UDP].sport, dg[UDP].dport) == (ENI_A, SERVER, nat, 7)
    assert bytes(dg[UDP].payload) == data and checksum_ok(dg)
    f = env.dp.find_flow(WORKER, VNI_A, ENV_IP, 42000, SERVER, 7, 17)
    assert f["tx_packets"] == 4


def test_the_fragmented_answer_comes_back_whole_to_the_environment(env):
    got, out, d = send(env, env_datagram(UDP(sport=42001, dport=7) / Raw(b"ask"), ident=0x1002))
    assert got == "REDIRECT", d
    fwd = Ether(out)
    data = bytes(reversed(range(256))) * 16
    answer = IP(src=SERVER, dst=ENI_A, id=0x2002) / UDP(sport=7, dport=fwd[UDP].sport) / \
        Raw(data)
    inner = []
    for i, f in enumerate(fragment(answer, fragsize=1200)):
        got, out, d = env.run("xdp_vpc", bytes(Ether(src=GW_A, dst=env.vpc_if["vpca"]["mac"]) /
                                                f), "vpca")
        want = "rev_established" if i == 0 else "rev_fragment"
        assert (got, d.get(want)) == ("REDIRECT", 1), (i, d)
        o = Ether(out)
        assert o[VXLAN].vni == VNI_A and o[VXLAN][Ether].dst == ENV_MAC
        inner.append(bytes(o[VXLAN][IP]))
    dg = whole(inner)
    assert (dg.src, dg.dst, dg[UDP].sport, dg[UDP].dport) == (SERVER, ENV_IP, 7, 42001)
    assert bytes(dg[UDP].payload) == data and checksum_ok(dg)


def test_a_big_ping_and_its_answer(env):
    """ICMP echo: the identifier (its 'port') is in the first fragment only."""
    ping = env_datagram(ICMP(type=8, id=4242, seq=1) / Raw(b"p" * 3000), ident=0x1003)
    outs = [send(env, f) for f in fragment(ping, fragsize=1480)]
    assert [v for v, _, _ in outs] == ["REDIRECT"] * 3, [d for _, _, d in outs]
    dg = whole([bytes(Ether(o)[IP]) for _, o, _ in outs])
    assert dg.src == ENI_A and bytes(dg[ICMP].payload) == b"p" * 3000 and checksum_ok(dg)


def test_a_later_fragment_before_its_first_is_dropped_and_counted(env):
    frags = udp_fragments(42002, 0x1004)
    got, _, d = send(env, frags[1])
    assert (got, d.get("drop_frag_no_first")) == ("DROP", 1), d
    # what Cilium does too: the first then goes, the one that came early is lost
    got, _, d = send(env, frags[0])
    assert got == "REDIRECT", d
    got, _, d = send(env, frags[2])
    assert (got, d.get("fwd_fragment")) == ("REDIRECT", 1), d


def test_a_later_fragment_that_overlaps_the_first_is_dropped(env):
    """RFC 1858's overlap attack: a fragment that rewrites the first one's transport header."""
    first = fragment(env_datagram(TCP(sport=42003, dport=80, flags="S") / Raw(b"s" * 100),
                                  ident=0x1005), fragsize=64)[0]
    got, _, d = send(env, first)
    assert got == "REDIRECT", d
    evil = IP(src=ENV_IP, dst=SERVER, id=0x1005, proto=6, frag=1, flags="MF") / Raw(b"\0" * 16)
    got, _, d = send(env, evil)
    assert (got, d.get("drop_frag_overlap")) == ("DROP", 1), d


def test_the_security_groups_are_judged_on_the_first_fragment(env):
    """Port 9 is not allowed: the first fragment is denied, so the later ones have no flow."""
    frags = udp_fragments(42004, 0x1006, dport=9)
    got, _, d = send(env, frags[0])
    assert (got, d.get("drop_sg_denied")) == ("DROP", 1), d
    got, _, d = send(env, frags[1])
    assert (got, d.get("drop_frag_no_first")) == ("DROP", 1), d


def test_fragments_of_another_environment_do_not_follow_the_first(env):
    """The datagram is the environment's: the same addresses and identifier from another VNI
    find nothing."""
    frags = udp_fragments(42005, 0x1007)
    assert send(env, frags[0])[0] == "REDIRECT"
    got, _, d = send(env, frags[1], vni=200)
    assert (got, d.get("drop_frag_no_first")) == ("DROP", 1), d


def test_a_fragment_outlives_its_first_by_no_more_than_the_lifetime(env):
    frags = udp_fragments(42006, 0x1008)
    assert send(env, frags[0])[0] == "REDIRECT"
    assert send(env, frags[1])[0] == "REDIRECT"
    time.sleep(FRAG_LIFE_S + 0.1)
    got, _, d = send(env, frags[2])
    assert (got, d.get("drop_frag_no_first")) == ("DROP", 1), d


@pytest.mark.parametrize("proto, head, why", [
    (6, bytes(TCP(sport=42010, dport=80, flags="S"))[:16], "TCP flags and more in the next"),
    (17, bytes(UDP(sport=42011, dport=7))[:4], "UDP ports only"),
], ids=["tcp", "udp"])
def test_tiny_first_fragments_are_dropped_both_ways(env, proto, head, why):
    first = IP(src=ENV_IP, dst=SERVER, id=0x1009, proto=proto, flags="MF") / Raw(head)
    got, _, d = send(env, first)
    assert (got, d.get("drop_frag_tiny")) == ("DROP", 1), (why, d)
    back = IP(src=SERVER, dst=ENI_A, id=0x2009, proto=proto, flags="MF") / Raw(head)
    got, _, d = env.run("xdp_vpc", bytes(Ether(src=GW_A, dst=env.vpc_if["vpca"]["mac"]) / back),
                        "vpca")
    assert (got, d.get("drop_frag_tiny")) == ("DROP", 1), (why, d)


def test_a_later_fragment_from_the_vpc_without_its_first(env):
    later = IP(src=SERVER, dst=ENI_A, id=0x200A, proto=17, frag=150) / Raw(b"x" * 64)
    got, _, d = env.run("xdp_vpc", bytes(Ether(src=GW_A, dst=env.vpc_if["vpca"]["mac"]) / later),
                        "vpca")
    assert (got, d.get("drop_frag_no_first")) == ("DROP", 1), d
    # not addressed to an ENI: the kernel's
    later.dst = "10.0.0.99"
    got, _, d = env.run("xdp_vpc", bytes(Ether(src=GW_A, dst=env.vpc_if["vpca"]["mac"]) / later),
                        "vpca")
    assert (got, d.get("pass_vpc_not_eni")) == ("PASS", 1), d


def test_a_later_fragment_too_big_for_the_vpc_link_is_dropped(env):
    m = env.dp.map("vpcs")
    old = m.lookup(1)
    frags = fragment(env_datagram(UDP(sport=42012, dport=7) / Raw(b"b" * 4000), ident=0x100B),
                     fragsize=1480)
    try:
        m.update(1, {**old, "mtu": 1400})
        first = IP(bytes(frags[0]))
        assert len(first) == 1500
        got, _, d = send(env, first)
        assert (got, d.get("drop_vpc_mtu")) == ("DROP", 1), d  # no DF on a fragment
        m.update(1, old)
        assert send(env, frags[0])[0] == "REDIRECT"
        m.update(1, {**old, "mtu": 1400})
        got, _, d = send(env, frags[1])
        assert (got, d.get("drop_vpc_mtu")) == ("DROP", 1), d
    finally:
        m.update(1, old)
