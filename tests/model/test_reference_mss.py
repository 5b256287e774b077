"""The reference model's MSS clamp on its own, judged by scapy: which option it lowers (scapy
parses the options) and that the TCP checksum is right afterwards (scapy recomputes it), or as
wrong as it came. No kernel: runs anywhere."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, in4_chksum
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import checksum

sys.path.insert(0, str(Path(__file__).resolve().parent))

import packets as P  # noqa: E402
from reference import F_ACK, F_SYN, Config, Eni, Model, Vpc, mss_clamp  # noqa: E402

IFINDEX, IF_MAC, GW_MAC = 7, "02:0a:00:00:00:07", "02:0a:00:00:00:01"
ENI, ENV, REMOTE, NAT = "10.0.1.4", P.ENV_IPS[0], "10.0.0.10", 40000
MSS = struct.Struct("!BBH")


def model(vpc_mtu: int = 1400, fabric_mtu: int = 1500) -> Model:
    cfg = Config(fabric_ip=P.FABRIC_IP, fabric_mac=P.FABRIC_MAC, gateway_mac="02:e1:1a:00:00:01",
                 fabric_mtu=fabric_mtu, workers={P.WORKERS[0]}, placements={(P.WORKERS[0], 100)},
                 enis={100: Eni(100, ENI, 1, 1, NAT, NAT, [(0, "0.0.0.0/0", 0, 65535)])},
                 vpcs={1: Vpc(1, IFINDEX, P.GATEWAY_IP, GW_MAC, IF_MAC, vpc_mtu)})
    return Model(cfg, lambda eni, key: iter([NAT]))


@pytest.mark.parametrize("vpc, fabric, want", [
    (1400, 1500, 1360), (0, 1500, 1410), (9000, 9000, 8910), (1500, 90, 1460), (0, 91, 536),
    (500, 1500, 536), (0, 0, 1460),
])
def test_the_clamp_is_what_fits_both_links(vpc, fabric, want):
    assert mss_clamp(fabric, vpc) == want


def forward(m: Model, options: bytes, flags: int = F_SYN, doff: int | None = None,
            spoil: int = 0) -> tuple[bytes, bytes]:
    """The environment's segment (its TCP checksum off by `spoil`) and what the VPC gets."""
    seg = bytearray(P.l4(6, ENV, REMOTE, 1000, 80, b"data", flags=flags, options=options,
                         doff=doff))
    seg[16:18] = ((struct.unpack_from("!H", seg, 16)[0] + spoil) & 0xFFFF).to_bytes(2, "big")
    inner = P.eth("02:e1:1a:00:00:01", P.ENV_MACS[0], P.ETH_IPV4) + P.ipv4(ENV, REMOTE, 6,
                                                                         bytes(seg))
    res = m.fabric(P.tunnel(P.WORKERS[0], 100, inner), 1)
    assert res.reason in ("fwd_new_flow", "fwd_established"), res
    return bytes(seg), res.out


def rebuilt(out: bytes) -> bytes:
    """`out` with both checksums as scapy computes them over its bytes (options as they are)."""
    p = Ether(out)
    ip = p[IP]
    seg = bytearray(bytes(ip.payload))
    seg[16:18] = b"\0\0"
    seg[16:18] = in4_chksum(6, ip, bytes(seg)).to_bytes(2, "big")
    hdr = bytearray(bytes(ip)[:ip.ihl * 4])
    hdr[10:12] = b"\0\0"
    hdr[10:12] = checksum(bytes(hdr)).to_bytes(2, "big")
    at = len(out) - len(bytes(ip))
    return out[:at] + bytes(hdr) + bytes(seg)


@pytest.mark.parametrize("options, at", [
    (MSS.pack(2, 4, 1460) + bytes([4, 2, 1, 0]), 0),
    (bytes([1]) + MSS.pack(2, 4, 9000) + bytes([1, 1, 1]), 1),  # at an odd offset
    (bytes([1, 1, 4, 2]) + MSS.pack(2, 4, 65535), 4),
    (MSS.pack(2, 4, 1200), 0),  # already smaller
    (MSS.pack(2, 4, 1361), 0),
    (bytes([1, 3, 3, 7]), None),
    (bytes([1] * 8) + MSS.pack(2, 4, 9000), None),  # the ninth option: not looked at
    (bytes([1] * 7) + MSS.pack(2, 4, 9000) + bytes(1), 7),  # the eighth
    (bytes([0, 1, 1, 1]) + MSS.pack(2, 4, 9000), None),  # after End of Option List
    (bytes([9, 1, 1, 1]) + MSS.pack(2, 4, 9000), None),  # after a length below 2
    (bytes([2, 3, 1, 1]) + MSS.pack(2, 4, 9000), 4),  # a kind 2 of length 3 is skipped
    (MSS.pack(2, 4, 9000) + MSS.pack(2, 4, 9000), 0),  # only the first counts
    (bytes([1, 1, 1, 1, 1, 1]) + MSS.pack(2, 4, 9000)[:2], None),  # cut: 2 bytes remain
], ids=["first", "odd", "after-sack", "smaller", "one-over", "none", "ninth", "eighth", "eol",
        "bad-length", "kind2-len3", "two", "cut"])
def test_a_syn_has_its_first_mss_lowered_and_a_right_checksum(options, at):
    seg, out = forward(model(), options)
    want = bytearray(options)
    if at is not None:
        v = struct.unpack_from("!H", want, at + 2)[0]
        struct.pack_into("!H", want, at + 2, min(v, 1360))
    got = bytes(Ether(out)[TCP])
    assert got[20:] == bytes(want) + b"data"
    assert rebuilt(out) == out


def test_the_data_offset_bounds_the_options():
    opts = bytes([1, 1, 1, 1]) + MSS.pack(2, 4, 9000)
    _, out = forward(model(), opts, doff=6)  # the MSS is data here
    assert bytes(Ether(out)[TCP])[24:28] == MSS.pack(2, 4, 9000) and rebuilt(out) == out


def test_other_segments_keep_their_mss_and_a_wrong_checksum_stays_as_wrong():
    m = model()
    forward(m, b"")
    _, out = forward(m, MSS.pack(2, 4, 9000), flags=F_ACK)
    assert dict(Ether(out)[TCP].options)["MSS"] == 9000
    _, out = forward(m, MSS.pack(2, 4, 9000), spoil=5)  # a retransmitted SYN, spoilt checksum
    got = Ether(out)[TCP]
    assert dict(got.options)["MSS"] == 1360
    assert (rebuilt(out) != out and
            (got.chksum - Ether(rebuilt(out))[TCP].chksum) % 0xFFFF == 5)


def test_a_syn_ack_is_clamped_towards_the_environment():
    m = model(vpc_mtu=0)
    forward(m, MSS.pack(2, 4, 1000))
    seg = P.l4(6, REMOTE, ENI, 80, NAT, b"", flags=F_SYN | F_ACK,
               options=bytes([1]) + MSS.pack(2, 4, 8960) + bytes([1, 1, 1]))
    res = m.vpc(P.eth(IF_MAC, GW_MAC, P.ETH_IPV4) + P.ipv4(REMOTE, ENI, 6, seg), IFINDEX, 2,
                lambda f: 50000)
    assert res.reason == "rev_established", res
    inner = bytes(Ether(res.out)[VXLAN].payload)
    assert dict(Ether(inner)[TCP].options)["MSS"] == 1410 and rebuilt(inner) == inner
