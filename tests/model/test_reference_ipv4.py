"""The reference model's router behaviour on its own (issue 14), from the RFCs' text: time exceeded
and fragmentation needed both ways (RFC 792, RFC 1191, RFC 1812 4.3.2), the packets that may not
be answered (RFC 1812 4.3.2.7), fragments followed by their first one (RFC 791) and RFC 1858's
tiny and overlapping fragments, MSS clamping switched off. Layouts and checksums are judged by
scapy, which shares nothing with the model. No kernel: runs anywhere."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import checksum

sys.path.insert(0, str(Path(__file__).resolve().parent))

import packets as P  # noqa: E402
from reference import FRAG_TIMEOUT_NS, NS, Config, Eni, Model, Vpc, mss_option_at  # noqa: E402

IFINDEX, IF_MAC, GW_MAC = 7, "02:0a:00:00:00:07", "02:0a:00:00:00:01"
GATEWAY_MAC = "02:e1:1a:00:00:01"
ENI, ENV, REMOTE, NAT = "10.0.1.4", P.ENV_IPS[0], "10.0.0.10", 40000
WORKER = P.WORKERS[0]
VPC_MTU, FABRIC_MTU = 1400, 3000
SPORT = 50000  # the tunnel's UDP source port that packets.tunnel() sends from


def model(**cfg) -> Model:
    c = Config(fabric_ip=P.FABRIC_IP, fabric_mac=P.FABRIC_MAC, gateway_mac=GATEWAY_MAC,
               fabric_mtu=FABRIC_MTU, workers=set(P.WORKERS),
               placements={(WORKER, 100), (P.WORKERS[1], 100)},
               enis={100: Eni(100, ENI, 1, 1, NAT, NAT, [(0, "0.0.0.0/0", 0, 65535)])},
               vpcs={1: Vpc(1, IFINDEX, P.GATEWAY_IP, GW_MAC, IF_MAC, VPC_MTU)}, **cfg)
    return Model(c, lambda eni, key: iter([NAT]))


def env_ip(l4: bytes, proto: int = 17, src: str = ENV, dst: str = REMOTE, **kw) -> bytes:
    return P.ipv4(src, dst, proto, l4, **kw)


def from_env(ip: bytes, worker: str = WORKER, link_dst: str = GATEWAY_MAC, **tunnel) -> bytes:
    return P.tunnel(worker, 100, P.eth(link_dst, P.ENV_MACS[0], P.ETH_IPV4) + ip, **tunnel)


def udp(sport: int = 1000, dport: int = 53, data: bytes = b"question", src: str = ENV,
        dst: str = REMOTE) -> bytes:
    return P.l4(17, src, dst, sport, dport, data)


def from_vpc(ip: bytes, link_dst: str = IF_MAC) -> bytes:
    return P.eth(link_dst, GW_MAC, P.ETH_IPV4) + ip


def sport(flow) -> int:
    return 50001


def opened(m: Model, now: int = 1) -> None:
    res = m.fabric(from_env(env_ip(udp())), now)
    assert res.reason == "fwd_new_flow", res


def reply(data: bytes = b"answer", **kw) -> bytes:
    return P.ipv4(REMOTE, ENI, 17, P.l4(17, REMOTE, ENI, 53, NAT, data), **kw)


def assert_icmp_error(ip: IP, src: str, dst: str, typ: int, code: int, mtu: int,
                      quoted: bytes) -> None:
    """RFC 792 / RFC 1812 4.3.2: the node's own error, every field and checksum by scapy."""
    raw = bytes(ip)
    # DF with ID 0: an atomic datagram, whose ID need not be unique (RFC 6864 4.2)
    assert (ip.version, ip.ihl, ip.tos, ip.id, int(ip.flags), ip.frag, ip.ttl, ip.proto) == \
        (4, 5, 0xC0, 0, 2, 0, 64, 1)
    assert (ip.src, ip.dst, ip.len) == (src, dst, 28 + len(quoted)) and len(raw) == ip.len
    assert checksum(raw[:20]) == 0
    icmp = raw[20:]
    assert checksum(icmp) == 0
    assert (icmp[0], icmp[1]) == (typ, code)
    assert icmp[4:8] == b"\0\0" + struct.pack("!H", mtu)  # RFC 1191: unused, next-hop MTU
    assert icmp[8:] == quoted
    if typ == 3 and code == 4:
        assert ip[ICMP].nexthopmtu == mtu


# ---- time exceeded, into the tunnel --------------------------------------------------------------
@pytest.mark.parametrize("ttl", [0, 1])
def test_a_packet_that_cannot_cross_is_answered_with_time_exceeded_through_its_tunnel(ttl):
    m = model()
    sent = env_ip(udp(), ttl=ttl)
    frame = from_env(sent)
    res = m.fabric(frame, 1)
    assert (res.verdict, res.reason) == ("TX", "tx_icmp_time_exceeded")
    out = Ether(res.out)
    assert (out.dst, out.src) == (P.WORKER_MACS[WORKER], P.FABRIC_MAC)
    outer = out[IP]
    assert (outer.src, outer.dst, outer.ttl, outer.tos, outer.id, outer.frag, outer.flags) == \
        (P.FABRIC_IP, WORKER, 64, 0, 0, 0, 0)
    assert checksum(bytes(outer)[:20]) == 0 and outer.len == len(res.out) - 14
    assert (out[UDP].sport, out[UDP].dport, out[UDP].chksum) == (SPORT, 4789, 0)
    assert bytes(out[UDP])[8:16] == bytes.fromhex("0800000000006400")  # I flag, VNI 100
    inner = out[VXLAN].payload
    assert (inner.dst, inner.src, inner.type) == (P.ENV_MACS[0], GATEWAY_MAC, 0x0800)
    # RFC 792: the header and 64 bits of data, as received (TTL too: RFC 1812 4.3.2.3)
    assert_icmp_error(inner[IP], "169.254.0.1", ENV, 11, 0, 0, sent[:28])
    assert not m.fwd, "no flow for a packet that never crossed"


def test_the_answer_keeps_the_worker_s_vlan_tags_and_leaves_geneve_options_behind():
    m = model()
    sent = env_ip(udp(data=b"a longer question"), ttl=1)
    frame = from_env(sent, kind="geneve", vlans=2, geneve_opts=bytes(8))
    res = m.fabric(frame, 1)
    assert res.reason == "tx_icmp_time_exceeded"
    out = Ether(res.out)
    assert [(t.vlan, t.type) for t in (out[Dot1Q], out[Dot1Q].payload)] == \
        [(10, 0x8100), (11, 0x0800)]
    assert res.out[12:22] == frame[12:22]  # the tags as they came
    g = out[GENEVE]
    assert (out[UDP].dport, g.optionlen, g.vni, g.proto) == (6081, 0, 100, 0x6558)
    assert_icmp_error(g.payload[IP], "169.254.0.1", ENV, 11, 0, 0, sent[:28])


def test_ttl_2_crosses_with_ttl_1():
    m = model()
    res = m.fabric(from_env(env_ip(udp(), ttl=2)), 1)
    assert res.reason == "fwd_new_flow" and IP(res.out[14:]).ttl == 1


def test_the_quote_is_the_whole_packet_when_shorter_and_keeps_ip_options():
    m = model()
    short = env_ip(b"abc", proto=47, ttl=1)  # 23 bytes: less than header and 64 bits
    res = m.fabric(from_env(short), 1)
    assert_icmp_error(Ether(res.out)[VXLAN].payload[IP], "169.254.0.1", ENV, 11, 0, 0, short)
    opts = env_ip(udp(), ttl=1, options=b"\x01\x01\x01\x00")
    res = m.fabric(from_env(opts), 1)
    assert_icmp_error(Ether(res.out)[VXLAN].payload[IP], "169.254.0.1", ENV, 11, 0, 0,
                      opts[:24 + 8])


# ---- RFC 1812 4.3.2.7 --------------------------------------------------------------------------
@pytest.mark.parametrize("src, dst", [
    ("0.0.0.0", REMOTE), ("0.1.2.3", REMOTE), ("127.0.0.1", REMOTE), ("224.0.0.9", REMOTE),
    ("240.0.0.1", REMOTE), ("255.255.255.255", REMOTE), (ENV, "224.0.0.9"),
    (ENV, "239.1.2.3"), (ENV, "255.255.255.255"),
], ids=["this-host", "net-0", "loopback", "multicast-src", "class-e-src", "broadcast-src",
        "multicast-dst", "multicast-dst-2", "broadcast-dst"])
def test_no_answer_to_or_from_an_address_that_names_no_single_host(src, dst):
    m = model()
    res = m.fabric(from_env(env_ip(udp(src=src, dst=dst), src=src, dst=dst, ttl=1)), 1)
    assert (res.verdict, res.reason) == ("DROP", "drop_ttl_expired")


@pytest.mark.parametrize("typ, answered", [
    (0, True), (8, True), (9, True), (10, True), (13, True), (14, True), (15, True), (16, True),
    (17, True), (18, True),  # the queries (RFC 792, 950, 1256)
    (3, False), (4, False), (5, False), (11, False), (12, False),  # the errors (RFC 1122 3.2.2)
    (1, False), (6, False), (19, False), (42, False),  # types the node does not know
])
def test_an_icmp_error_is_never_answered_nor_an_unknown_type(typ, answered):
    m = model()
    icmp = bytes([typ, 0, 0, 0]) + b"\0\1\0\1" + b"payload!"
    icmp = icmp[:2] + checksum(icmp).to_bytes(2, "big") + icmp[4:]
    res = m.fabric(from_env(env_ip(icmp, proto=1, ttl=1)), 1)
    assert res.reason == ("tx_icmp_time_exceeded" if answered else "drop_ttl_expired")


def test_an_icmp_datagram_too_short_to_show_its_type_is_not_answered_whatever_pads_it():
    m = model()
    frame = from_env(env_ip(b"", proto=1, ttl=1) + bytes(8))
    assert m.fabric(frame, 1).reason == "drop_ttl_expired"


@pytest.mark.parametrize("link_dst", ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:09"])
def test_no_answer_to_a_link_layer_broadcast_or_multicast(link_dst):
    m = model()
    frame = from_env(env_ip(udp(), ttl=1), link_dst=link_dst)
    assert m.fabric(frame, 1).reason == "drop_ttl_expired"
    m = model()
    opened(m)
    assert m.vpc(from_vpc(reply(ttl=1), link_dst), IFINDEX, 2, sport).reason == \
        "drop_ttl_expired"


def test_no_answer_without_a_tunnel_gateway_or_over_the_rate():
    frame = from_env(env_ip(udp(), ttl=1))
    assert model(tunnel_gateway=None).fabric(frame, 1).reason == "drop_ttl_expired"
    assert model(icmp_rate=0).fabric(frame, 1).reason == "drop_icmp_ratelimit"


def test_the_answer_needs_the_vni_s_eni_and_the_worker_placed_on_it():
    m = model()
    frame = P.tunnel(WORKER, 999, P.eth(GATEWAY_MAC, P.ENV_MACS[0], P.ETH_IPV4) +
                     env_ip(udp(), ttl=1))
    assert m.fabric(frame, 1).reason == "drop_unknown_vni"
    m.cfg.placements.discard((WORKER, 100))
    assert m.fabric(from_env(env_ip(udp(), ttl=1)), 1).reason == "drop_worker_not_placed"


# ---- fragmentation needed, forward ------------------------------------------------------------
def big_udp(total: int, **kw) -> bytes:
    return env_ip(udp(data=b"d" * (total - 28)), **kw)


def test_too_big_for_the_vpc_link_with_df_is_answered_with_its_mtu():
    m = model()
    sent = big_udp(VPC_MTU + 1, frag=0x4000)
    res = m.fabric(from_env(sent), 1)
    assert (res.verdict, res.reason) == ("TX", "tx_icmp_frag_needed")
    assert_icmp_error(Ether(res.out)[VXLAN].payload[IP], "169.254.0.1", ENV, 3, 4, VPC_MTU,
                      sent[:28])
    # the flow was opened all the same: the sender tries again, smaller
    assert res.new_flow and len(m.fwd) == 1 and "eni:tx_packets" not in res.extra
    assert m.fabric(from_env(big_udp(VPC_MTU, frag=0x4000)), 2).reason == "fwd_established"


def test_too_big_without_df_is_dropped_and_counted():
    m = model()
    res = m.fabric(from_env(big_udp(VPC_MTU + 1)), 1)
    assert (res.verdict, res.reason) == ("DROP", "drop_vpc_mtu")


def test_a_vpc_link_of_unknown_mtu_bounds_nothing():
    m = model()
    m.cfg.vpcs[1].mtu = 0
    assert m.fabric(from_env(big_udp(2000, frag=0x4000)), 1).reason == "fwd_new_flow"


def test_an_environment_s_icmp_error_too_big_for_the_vpc_link_is_dropped_never_answered():
    """Issue 14: too big for the VPC's link is never a redirect (the kernel would drop it
    unseen); and an error is never answered with one (RFC 1812 4.3.2.7), DF or not."""
    m = model()
    opened(m)
    quoted = P.ipv4(REMOTE, ENV, 17, P.l4(17, REMOTE, ENV, 53, 1000, b"z" * 1444))
    msg = bytes([3, 3, 0, 0, 0, 0, 0, 0]) + quoted
    msg = msg[:2] + checksum(msg).to_bytes(2, "big") + msg[4:]
    for df in (0, 0x4000):
        res = m.fabric(from_env(env_ip(msg, proto=1, frag=df)), 2)
        assert (res.verdict, res.reason) == ("DROP", "drop_vpc_mtu")
    res = m.fabric(from_env(env_ip(msg[:VPC_MTU - 20], proto=1)), 2)
    assert res.reason == "fwd_icmp_error"


# ---- the return way: time exceeded and fragmentation needed from the ENI address --------------
def test_a_reply_that_cannot_cross_is_answered_from_the_eni_address_out_of_its_interface():
    m = model()
    opened(m)
    sent = reply(ttl=1)
    res = m.vpc(from_vpc(sent), IFINDEX, 2, sport)
    assert (res.verdict, res.reason) == ("TX", "tx_icmp_time_exceeded")
    out = Ether(res.out)
    assert (out.dst, out.src, out.type) == (GW_MAC, IF_MAC, 0x0800)
    assert_icmp_error(out[IP], ENI, REMOTE, 11, 0, 0, sent[:28])
    f = next(iter(m.fwd.values()))
    assert (f.rx_packets, f.last_seen) == (0, 1), "an answer is not the flow's traffic"


def test_a_reply_of_no_live_flow_is_not_answered_and_an_error_never():
    m = model()
    assert m.vpc(from_vpc(reply(ttl=1)), IFINDEX, 2, sport).reason == "drop_no_flow"
    opened(m)
    err = bytes([3, 3, 0, 0, 0, 0, 0, 0]) + P.ipv4(ENI, REMOTE, 17, P.l4(17, ENI, REMOTE, NAT,
                                                                        53, b"q"))
    err = err[:2] + checksum(err).to_bytes(2, "big") + err[4:]
    res = m.vpc(from_vpc(P.ipv4(P.GATEWAY_IP, ENI, 1, err, ttl=1)), IFINDEX, 2, sport)
    assert res.reason == "drop_ttl_expired"


def test_a_reply_too_big_for_the_tunnel_learns_what_fits_inside_it():
    m = model()
    opened(m)
    fits = FABRIC_MTU - 50  # outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14
    res = m.vpc(from_vpc(reply(b"a" * (fits - 28), frag=0x4000)), IFINDEX, 2, sport)
    assert res.reason == "rev_established"
    sent = reply(b"a" * (fits + 1 - 28), frag=0x4000)
    res = m.vpc(from_vpc(sent), IFINDEX, 3, sport)
    assert (res.verdict, res.reason) == ("TX", "tx_icmp_frag_needed")
    assert_icmp_error(Ether(res.out)[IP], ENI, REMOTE, 3, 4, fits, sent[:28])
    res = m.vpc(from_vpc(reply(b"a" * (fits + 1 - 28))), IFINDEX, 4, sport)
    assert (res.verdict, res.reason) == ("DROP", "drop_fabric_mtu")


# ---- fragments ---------------------------------------------------------------------------------
def fragments(proto: int, l4: bytes, cut: int, src: str, dst: str, ident: int = 7,
              **kw) -> tuple[bytes, bytes]:
    """The first fragment (the transport segment's first `cut` bytes, MF) and the last."""
    first = P.ipv4(src, dst, proto, l4[:cut], frag=0x2000, ident=ident, **kw)
    last = P.ipv4(src, dst, proto, l4[cut:], frag=cut // 8, ident=ident, **kw)
    return first, last


def test_a_datagram_in_fragments_follows_its_first_fragment_forward():
    m = model()
    seg = udp(data=b"x" * 40)
    first, last = fragments(17, seg, 24, ENV, REMOTE)
    res = m.fabric(from_env(first), 1)
    assert res.reason == "fwd_new_flow"
    assert IP(res.out[14:]).sport == NAT  # the ports are translated in the first
    res = m.fabric(from_env(last), 2)
    assert (res.verdict, res.reason) == ("REDIRECT", "fwd_fragment")
    out = IP(res.out[14:])
    assert (out.src, out.dst, out.ttl, out.frag, out.id) == (ENI, REMOTE, 63, 3, 7)
    assert checksum(res.out[14:34]) == 0
    assert res.out[34:] == last[20:], "a later fragment carries no ports: its data is untouched"
    assert Ether(res.out).dst == GW_MAC and Ether(res.out).src == IF_MAC
    f = next(iter(m.fwd.values()))
    assert (f.tx_packets, f.last_seen) == (2, 1), "counted, but it keeps the flow no more alive"
    assert not res.refreshed and res.extra["eni:tx_packets"] == 1


def test_a_middle_fragment_then_the_last_and_a_later_one_before_its_first():
    m = model()
    seg = udp(data=b"x" * 64)
    first = P.ipv4(ENV, REMOTE, 17, seg[:24], frag=0x2000, ident=9)
    middle = P.ipv4(ENV, REMOTE, 17, seg[24:48], frag=0x2000 | 3, ident=9)
    last = P.ipv4(ENV, REMOTE, 17, seg[48:], frag=6, ident=9)
    assert m.fabric(from_env(middle), 1).reason == "drop_frag_no_first"  # out of order
    assert m.fabric(from_env(first), 2).reason == "fwd_new_flow"
    assert m.fabric(from_env(last), 3).reason == "fwd_fragment"
    assert m.fabric(from_env(middle), 4).reason == "fwd_fragment"


def test_later_fragments_without_their_first_overlapping_it_or_too_late_are_dropped():
    m = model()
    seg = udp(data=b"x" * 40)
    first, last = fragments(17, seg, 24, ENV, REMOTE)
    m.fabric(from_env(first), 1)
    overlap = P.ipv4(ENV, REMOTE, 17, b"EVIL" * 4, frag=2, ident=7)  # byte 16 < 24
    assert m.fabric(from_env(overlap), 2).reason == "drop_frag_overlap"
    # a first fragment of 20 bytes (not a multiple of 8): one at byte 16 rewrites 4 of them
    odd = P.ipv4(ENV, REMOTE, 17, seg[:20], frag=0x2000, ident=6)
    assert m.fabric(from_env(odd), 2).reason == "fwd_established"
    assert m.fabric(from_env(P.ipv4(ENV, REMOTE, 17, seg[16:], frag=2, ident=6)), 2).reason == \
        "drop_frag_overlap"
    assert m.fabric(from_env(P.ipv4(ENV, REMOTE, 17, seg[24:], frag=3, ident=6)), 2).reason == \
        "fwd_fragment"
    other = P.ipv4(ENV, REMOTE, 17, seg[24:], frag=3, ident=8)
    assert m.fabric(from_env(other), 2).reason == "drop_frag_no_first"
    assert m.fabric(from_env(last, worker=P.WORKERS[1]), 2).reason == "drop_frag_no_first"
    expiring = P.ipv4(ENV, REMOTE, 17, seg[24:], frag=3, ident=7, ttl=1)
    assert m.fabric(from_env(expiring), 2).reason == "drop_ttl_expired"  # never answered
    assert m.fabric(from_env(last), 1 + FRAG_TIMEOUT_NS).reason == "fwd_fragment"
    assert m.fabric(from_env(last), 2 + FRAG_TIMEOUT_NS).reason == "drop_frag_no_first"


def test_a_later_fragment_of_a_flow_that_died_is_dropped():
    m = model()
    first, last = fragments(17, udp(data=b"x" * 40), 24, ENV, REMOTE)
    m.fabric(from_env(first), 1)
    dead = 1 + (m.cfg.timeouts["udp"] + 1) * NS  # within no fragment lifetime either...
    m.frags[next(iter(m.frags))].first_ns = dead - NS  # ...so keep the record alive
    assert m.fabric(from_env(last), dead).reason == "drop_frag_no_first"


@pytest.mark.parametrize("proto, l4, cut, pad", [
    (6, P.l4(6, ENV, REMOTE, 1000, 80, b"", options=bytes([2, 4, 5, 0xB4]) + bytes(8)), 24,
     b""),  # data offset 8: 32 bytes of header, 24 in the fragment
    (6, P.l4(6, ENV, REMOTE, 1000, 80, b"data"), 16, None),  # the rest in the padding
    (17, udp(), 0, None),
], ids=["tcp-options-cut", "tcp-header-cut", "udp-header-in-padding"])
def test_a_tiny_first_fragment_is_dropped_both_ways(proto, l4, cut, pad):
    """RFC 1858: a first fragment that does not hold its transport header whole. The parser
    may still find a header's bytes in the frame (padding after the datagram): the datagram's
    length is what counts."""
    pad = l4[cut:max(20 if proto == 6 else 8, cut)] if pad is None else pad
    m = model()
    frag = P.ipv4(ENV, REMOTE, proto, l4[:cut], frag=0x2000, ident=5) + pad
    assert m.fabric(from_env(frag), 1).reason == "drop_frag_tiny"
    opened(m)
    back = P.ipv4(REMOTE, ENI, proto, l4[:cut], frag=0x2000, ident=5) + pad
    assert m.vpc(from_vpc(back), IFINDEX, 2, sport).reason == "drop_frag_tiny"


def test_a_datagram_in_fragments_follows_its_first_fragment_back():
    m = model()
    opened(m)
    seg = P.l4(17, REMOTE, ENI, 53, NAT, b"y" * 40)
    first, last = fragments(17, seg, 16, REMOTE, ENI, ident=0x1234)
    assert m.vpc(from_vpc(last), IFINDEX, 2, sport).reason == "drop_frag_no_first"
    res = m.vpc(from_vpc(first), IFINDEX, 3, sport)
    assert res.reason == "rev_established"
    assert Ether(res.out)[VXLAN].payload[UDP].dport == 1000
    res = m.vpc(from_vpc(last), IFINDEX, 4, sport)
    assert (res.verdict, res.reason) == ("REDIRECT", "rev_fragment")
    inner = Ether(res.out)[VXLAN].payload
    assert (inner.dst, inner.src) == (P.ENV_MACS[0], GATEWAY_MAC)
    ip = inner[IP]
    assert (ip.src, ip.dst, ip.ttl, ip.frag, ip.id) == (REMOTE, ENV, 63, 2, 0x1234)
    assert checksum(bytes(ip)[:20]) == 0 and bytes(ip)[20:] == last[20:]
    f = next(iter(m.fwd.values()))
    assert (f.rx_packets, f.last_seen) == (2, 3) and not res.refreshed
    overlap = P.ipv4(REMOTE, ENI, 17, b"EVIL" * 2, frag=1, ident=0x1234)
    assert m.vpc(from_vpc(overlap), IFINDEX, 5, sport).reason == "drop_frag_overlap"
    # a later fragment with TTL 1 is never answered (RFC 1812 4.3.2.7)
    late = P.ipv4(REMOTE, ENI, 17, seg[16:], frag=2, ident=0x1234, ttl=1)
    assert m.vpc(from_vpc(late), IFINDEX, 6, sport).reason == "drop_ttl_expired"


def test_an_icmp_error_in_fragments_from_the_vpc_is_malformed():
    m = model()
    opened(m)
    err = bytes([3, 3, 0, 0, 0, 0, 0, 0]) + P.ipv4(ENI, REMOTE, 17,
                                                    P.l4(17, ENI, REMOTE, NAT, 53, b"q"))
    err = err[:2] + checksum(err).to_bytes(2, "big") + err[4:]
    res = m.vpc(from_vpc(P.ipv4(P.GATEWAY_IP, ENI, 1, err, frag=0x2000)), IFINDEX, 2, sport)
    assert res.reason == "drop_icmp_error_malformed"


# ---- MSS clamping off ----------------------------------------------------------------------------
def test_with_clamping_off_a_syn_keeps_its_mss_both_ways():
    syn = P.l4(6, ENV, REMOTE, 1000, 80, b"", flags=0x02, options=bytes([2, 4, 0x23, 0x28]))
    for on, want in ((True, VPC_MTU - 40), (False, 9000)):
        m = model(mss_clamping=on)
        res = m.fabric(from_env(env_ip(syn, proto=6)), 1)
        out = res.out[14:]
        assert struct.unpack_from("!H", out, 20 + mss_option_at(out[20:]))[0] == want
        assert_tcp_checksum(out)
        synack = P.l4(6, REMOTE, ENI, 80, NAT, b"", flags=0x12,
                      options=bytes([2, 4, 0x23, 0x28]))
        res = m.vpc(from_vpc(P.ipv4(REMOTE, ENI, 6, synack)), IFINDEX, 2, sport)
        back = bytes(Ether(res.out)[VXLAN].payload[IP])
        assert struct.unpack_from("!H", back, 20 + mss_option_at(back[20:]))[0] == want
        assert_tcp_checksum(back)


def assert_tcp_checksum(ip: bytes) -> None:
    """The segment's checksum is what scapy computes for it."""
    pkt = IP(ip)
    got = pkt[TCP].chksum
    del pkt[TCP].chksum
    assert IP(bytes(pkt))[TCP].chksum == got
