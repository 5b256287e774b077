"""MSS clamping: SYNs and SYN/ACKs announce no more than fits the VPC's link and the tunnel
(the fabric's MTU less 50 bytes of outer headers), less 40. Checksums are scapy's."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from conftest import ENI_A, ENV_IP, GW_A, SERVER, VNI_A, env_frame, tunnel


def mss_of(pkt) -> int | None:
    return dict(pkt[TCP].options).get("MSS")


def checksums_hold(frame: bytes) -> bool:
    """Rebuilt by scapy with its own checksums, the frame is unchanged."""
    p = Ether(frame)
    del p[IP].chksum, p[TCP].chksum
    return bytes(Ether(bytes(p))) == frame


@pytest.fixture
def vpc_mtu(env):
    """Set the VPC interface's MTU as the datapath knows it; put back afterwards."""
    m = env.dp.map("vpcs")
    old = m.lookup(1)

    def set_(mtu: int) -> None:
        m.update(1, {**old, "mtu": mtu})

    yield set_
    m.update(1, old)


def syn(sport: int, options, flags="S"):
    return tunnel(env_frame(TCP(sport=sport, dport=80, flags=flags, options=options)))


def test_a_syn_announcing_more_than_the_path_carries_is_clamped_exactly(env, vpc_mtu):
    vpc_mtu(1500)
    pkt = syn(39001, [("MSS", 8960), ("SAckOK", b""), ("WScale", 7)])
    got, out, d = env.run("xdp_fabric", bytes(pkt))
    assert (got, d.get("fwd_new_flow")) == ("REDIRECT", 1), d
    o = Ether(out)
    exp = pkt[VXLAN].payload.copy()
    exp[Ether].src, exp[Ether].dst = env.vpc_if["vpca"]["mac"], GW_A
    exp[IP].src, exp[IP].ttl = ENI_A, 63
    exp[TCP].sport = o[TCP].sport
    exp[TCP].options = [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)]
    del exp[IP].chksum, exp[TCP].chksum
    assert out == bytes(Ether(bytes(exp)))


@pytest.mark.parametrize("sport, options, want", [
    (39010, [("NOP", None), ("MSS", 9000), ("NOP", None), ("NOP", None)], 1460),  # odd offset
    (39011, [("NOP", None), ("NOP", None), ("SAckOK", b""), ("MSS", 4000)], 1460),
    (39012, [("MSS", 1200)], 1200),  # smaller already: left alone
    (39013, [("WScale", 3)], None),  # none at all
    (39014, [], None),
], ids=["odd-offset", "after-sackok", "smaller", "no-mss", "no-options"])
def test_clamp_cases(env, vpc_mtu, sport, options, want):
    vpc_mtu(1500)
    pkt = syn(sport, options)
    got, out, d = env.run("xdp_fabric", bytes(pkt))
    assert got == "REDIRECT", d
    assert mss_of(Ether(out)) == want and checksums_hold(out)
    if want is None or want == 1200:  # options and payload untouched
        assert bytes(Ether(out)[TCP])[20:] == bytes(pkt[TCP])[20:]


def test_the_tunnel_bounds_it_when_the_vpc_link_is_larger(env, vpc_mtu):
    vpc_mtu(9000)
    fabric = env.dp.config()["fabric_mtu"]
    got, out, _ = env.run("xdp_fabric", bytes(syn(39020, [("MSS", 8960)])))
    assert got == "REDIRECT" and mss_of(Ether(out)) == fabric - 50 - 40 and checksums_hold(out)
    assert env.dp.mss_clamps()[env.vpc_if["vpca"]["ifindex"]] == fabric - 90  # what status says


@pytest.mark.parametrize("vpc, fabric", [(1400, 3000), (0, 1400), (9000, 600), (1500, 1500)])
def test_status_says_what_the_datapath_clamps_to(env, vpc_mtu, vpc, fabric):
    """Datapath.mss_clamps (what `status` shows) against the datapath's own clamp."""
    cfg = env.dp.config()
    vpc_mtu(vpc)
    env.dp.map("config").update(0, {**cfg, "fabric_mtu": fabric})
    try:
        got, out, _ = env.run("xdp_fabric", bytes(syn(39050 + vpc % 7 + fabric % 11,
                                                      [("MSS", 65000)])))
        assert mss_of(Ether(out)) == env.dp.mss_clamps()[env.vpc_if["vpca"]["ifindex"]]
    finally:
        env.dp.map("config").update(0, cfg)


def test_a_retransmitted_syn_is_clamped_too_and_other_segments_never(env, vpc_mtu):
    vpc_mtu(1400)
    env.run("xdp_fabric", bytes(syn(39030, [("MSS", 1460)])))
    got, out, d = env.run("xdp_fabric", bytes(syn(39030, [("MSS", 1460)])))
    assert d.get("fwd_established") == 1 and mss_of(Ether(out)) == 1360, d
    got, out, d = env.run("xdp_fabric", bytes(syn(39030, [("MSS", 1460)], flags="A")))
    assert d.get("fwd_established") == 1 and mss_of(Ether(out)) == 1460  # not a SYN


def test_a_syn_ack_from_the_vpc_is_clamped_for_the_environment(env, vpc_mtu):
    vpc_mtu(1400)
    got, fwd, _ = env.run("xdp_fabric", bytes(syn(39040, [("MSS", 1000)])))
    f = Ether(fwd)
    rep = (Ether(src=GW_A, dst=env.vpc_if["vpca"]["mac"]) / IP(src=SERVER, dst=ENI_A) /
           TCP(sport=80, dport=f[TCP].sport, flags="SA", options=[("MSS", 8960), ("NOP", None),
                                                                    ("WScale", 9)]))
    got, out, d = env.run("xdp_vpc", bytes(rep), "vpca")
    assert (got, d.get("rev_established")) == ("REDIRECT", 1), d
    inner = bytes(Ether(out)[VXLAN].payload)
    i = Ether(inner)
    assert (i[IP].dst, i[TCP].dport, mss_of(i)) == (ENV_IP, 39040, 1360)
    assert checksums_hold(inner)
    assert VNI_A == Ether(out)[VXLAN].vni


def test_an_mss_in_the_ethernet_padding_is_no_option(env, vpc_mtu):
    """A data offset that reaches past the IPv4 datagram: the bytes after it are padding, and
    an MSS option there is left alone (the checksum does not cover it)."""
    from scapy.packet import Raw

    vpc_mtu(1400)
    tcp = bytearray(bytes(TCP(sport=39060, dport=80, flags="S", options=[("NOP", None)] * 4)))
    tcp[12] = 7 << 4  # 28 bytes of header claimed; the datagram holds 24
    padding = bytes([2, 4, 0x23, 0x00])  # MSS 8960, after the datagram
    inner = Ether(bytes(env_frame(Raw(bytes(tcp)))))
    inner[IP].proto, inner[IP].len = 6, 20 + len(tcp)
    frame = bytes(tunnel(Raw(bytes(inner) + padding)))
    got, out, d = env.run("xdp_fabric", frame)
    assert got == "REDIRECT", d
    assert out.endswith(padding)
