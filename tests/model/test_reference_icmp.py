"""The reference model's ICMP error translation on its own, judged by scapy: the model is what
the datapath is compared with, so its checksums must be right by an implementation that shares
nothing with either (RFC 792 message checksum, RFC 791 header checksum, RFC 768/793 pseudo header).
No kernel: runs anywhere."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import checksum

sys.path.insert(0, str(Path(__file__).resolve().parent))

import packets as P  # noqa: E402
from reference import Config, Eni, Model, Vpc  # noqa: E402

IFINDEX, IF_MAC, GW_MAC = 7, "02:0a:00:00:00:07", "02:0a:00:00:00:01"
ENI, ENV, REMOTE, NAT = "10.0.1.4", P.ENV_IPS[0], "10.0.0.10", 40000


def model() -> Model:
    cfg = Config(fabric_ip=P.FABRIC_IP, fabric_mac=P.FABRIC_MAC, gateway_mac="02:e1:1a:00:00:01",
                 fabric_mtu=3000, workers={P.WORKERS[0]}, placements={(P.WORKERS[0], 100)},
                 enis={100: Eni(100, ENI, 1, 1, NAT, NAT, [(0, "0.0.0.0/0", 0, 65535)])},
                 vpcs={1: Vpc(1, IFINDEX, P.GATEWAY_IP, GW_MAC, IF_MAC)})
    return Model(cfg, lambda eni, key: iter([NAT]))


def opened(m: Model, l4: bytes, proto: int) -> bytes:
    """A flow opened by the environment; returns its packet as the VPC saw it (IPv4 on)."""
    inner = P.eth("02:e1:1a:00:00:01", P.ENV_MACS[0], P.ETH_IPV4) + P.ipv4(ENV, REMOTE, proto, l4)
    res = m.fabric(P.tunnel(P.WORKERS[0], 100, inner), 1)
    assert res.reason == "fwd_new_flow", res
    return res.out[14:]


@pytest.mark.parametrize("proto, l4, cut", [
    (17, P.l4(17, ENV, REMOTE, 1000, 53, b"question"), None),
    (17, P.l4(17, ENV, REMOTE, 1000, 53, b"question", udp_csum=False), None),
    (6, P.l4(6, ENV, REMOTE, 1000, 80, b"syn data"), None),
    (6, P.l4(6, ENV, REMOTE, 1000, 80, b"syn data"), 28),  # no TCP checksum in the quote
    (1, P.l4(1, ENV, REMOTE, 1000, 0, b"ping"), None),
], ids=["udp", "udp-no-checksum", "tcp", "tcp-cut", "echo"])
@pytest.mark.parametrize("typ, code, rest", [(3, 4, b"\0\0\x05\x78"), (11, 0, bytes(4)),
                                             (12, 0, b"\x09\0\0\0")])
def test_the_translated_error_has_every_checksum_right(proto, l4, cut, typ, code, rest):
    m = model()
    sent = opened(m, l4, proto)
    quote = sent if cut is None else sent[:cut]
    msg = bytes([typ, code]) + b"\0\0" + rest + quote
    msg = msg[:2] + checksum(msg).to_bytes(2, "big") + msg[4:]
    err = P.eth(IF_MAC, GW_MAC, P.ETH_IPV4) + P.ipv4(P.GATEWAY_IP, ENI, 1, msg)
    res = m.vpc(err, IFINDEX, 2, lambda f: 50000)
    assert res.reason == "rev_icmp_error", res
    got = Ether(res.out)[VXLAN].payload
    assert got[IP].dst == ENV and got[IP].ttl == 63
    ip = bytes(got[IP])
    assert checksum(ip[:20]) == 0
    icmp = ip[20:]
    assert checksum(icmp) == 0 and icmp[:8] == msg[:2] + icmp[2:4] + msg[4:8]
    # the quote is the environment's own packet: only its source and port differ from the
    # packet it sent, and its checksums are what scapy computes for that
    want = IP(P.ipv4(ENV, REMOTE, proto, l4))
    want.ttl = sent[8]
    del want.chksum
    if cut is not None or (proto == 17 and l4[6:8] == b"\0\0"):
        want = IP(bytes(want))  # the header checksum recomputed, the transport's kept
    else:
        del want.payload.chksum
    want = bytes(want)[:len(quote)]
    assert icmp[8:] == want
    assert m.fwd[next(iter(m.fwd))].last_seen == 1  # not a sign of the flow's life


def test_an_error_quoting_another_hosts_packet_is_about_no_flow():
    m = model()
    sent = bytearray(opened(m, P.l4(17, ENV, REMOTE, 1000, 53), 17))
    sent[12:16] = bytes([10, 0, 1, 99])
    msg = bytes([3, 3, 0, 0, 0, 0, 0, 0]) + bytes(sent)
    msg = msg[:2] + checksum(msg).to_bytes(2, "big") + msg[4:]
    err = P.eth(IF_MAC, GW_MAC, P.ETH_IPV4) + P.ipv4(P.GATEWAY_IP, ENI, 1, msg)
    assert m.vpc(err, IFINDEX, 2, lambda f: 50000).reason == "drop_icmp_error_no_flow"


@pytest.mark.parametrize("proto, l4, cut", [
    (17, P.l4(17, ENV, REMOTE, 1000, 53, b"question"), None),
    (17, P.l4(17, ENV, REMOTE, 1000, 53, b"question"), 28),
    (6, P.l4(6, ENV, REMOTE, 1000, 80, b"syn data"), None),
], ids=["udp", "udp-cut", "tcp"])
def test_an_environments_error_reaches_the_vpc_with_every_checksum_right(proto, l4, cut):
    m = model()
    opened(m, l4, proto)
    # the reply the VPC sends, and what the environment gets of it
    sent = P.ipv4(REMOTE, ENI, proto, P.l4(proto, REMOTE, ENI, l4[2] * 256 + l4[3], NAT,
                                           b"answer", flags=0x12))
    res = m.vpc(P.eth(IF_MAC, GW_MAC, P.ETH_IPV4) + sent, IFINDEX, 2, lambda f: 50000)
    assert res.reason == "rev_established", res
    got = bytes(Ether(res.out)[VXLAN].payload[IP])
    quote = got if cut is None else got[:cut]
    msg = bytes([3, 3, 0, 0, 0, 0, 0, 0]) + quote
    msg = msg[:2] + checksum(msg).to_bytes(2, "big") + msg[4:]
    inner = P.eth("02:e1:1a:00:00:01", P.ENV_MACS[0], P.ETH_IPV4) + P.ipv4(ENV, REMOTE, 1, msg)
    res = m.fabric(P.tunnel(P.WORKERS[0], 100, inner), 3)
    assert res.reason == "fwd_icmp_error", res
    out = Ether(res.out)
    assert (out.dst, out.src, out[IP].src, out[IP].dst, out[IP].ttl) == \
        (GW_MAC, IF_MAC, ENI, REMOTE, 63)
    ip = bytes(out[IP])
    assert checksum(ip[:20]) == 0 and checksum(ip[20:]) == 0
    # the quote is what the VPC sent, as the environment's hop left it (TTL one less)
    want = IP(sent)
    want.ttl -= 1
    del want.chksum
    assert ip[28:] == bytes(want)[:len(quote)]
    assert m.fwd[next(iter(m.fwd))].last_seen == 2  # the reply's time, not the error's
