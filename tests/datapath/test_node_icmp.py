"""The ICMP the node generates itself (RFC 1812 4.3.2, RFC 1191): time exceeded for a TTL that
would reach 0 and fragmentation needed for a packet too big for the next link with DF set, both
ways. Into the tunnel from the tunnel gateway's address, towards the VPC from the ENI address;
never about an ICMP error, a later fragment or a source that names no host; within the per-CPU
rate. Expected frames are built and checksummed by scapy, never by the code under test."""

from __future__ import annotations

import os
import time

import pytest
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from conftest import (ENI_A, ENV_IP, ENV_MAC, FABRIC_IP, FABRIC_MAC_SEEN, GATEWAY_MAC, GW_A,
                      SERVER, VNI_A, WORKER, WORKER_MAC, env_frame, tunnel)
from eniplane import ipv4

TGW = ipv4.DEFAULT_TUNNEL_GATEWAY


@pytest.fixture
def vpc_mtu(env):
    """The VPC interface's MTU as the datapath knows it; put back afterwards."""
    m = env.dp.map("vpcs")
    old = m.lookup(1)
    yield lambda mtu: m.update(1, {**old, "mtu": mtu})
    m.update(1, old)


@pytest.fixture
def fabric_mtu(env):
    old = env.dp.config()["fabric_mtu"]
    yield lambda mtu: env.dp._set_config_fields({"fabric_mtu": mtu})
    env.dp._set_config_fields({"fabric_mtu": old})


@pytest.fixture
def settings(env):
    """set_ipv4 for one test; the node's settings come back afterwards."""
    old = env.dp.ipv4_settings()
    yield env.dp.set_ipv4
    env.dp.set_ipv4(**old)


def quote(ip: IP) -> bytes:
    """RFC 792: the datagram's IPv4 header and its first 64 bits of data, as received."""
    raw = bytes(ip)
    return raw[:min(len(raw), (raw[0] & 0x0F) * 4 + 8)]


def answer_into_tunnel(env, frame: Ether, icmp: ICMP, tunnel_hdr=None, dport=4789) -> bytes:
    """What the environment's worker gets: from the node's fabric MAC and address back to the
    worker, in the tunnel and VNI the frame came in, the tunnel gateway speaking to the
    environment, quoting the inner packet."""
    inner_ip = frame[VXLAN][IP] if tunnel_hdr is None else frame[GENEVE][IP]
    th = tunnel_hdr if tunnel_hdr is not None else VXLAN(vni=VNI_A, flags=0x08)
    return bytes(Ether(src=env.dp.config()["fabric_mac"], dst=WORKER_MAC) /
                 IP(src=FABRIC_IP, dst=WORKER, ttl=64, id=0, tos=0, flags=0) /
                 UDP(sport=40000, dport=dport, chksum=0) / th /
                 Ether(src=GATEWAY_MAC, dst=ENV_MAC) /
                 IP(src=TGW, dst=ENV_IP, tos=0xC0, id=0, ttl=64, flags="DF") / icmp /
                 Raw(quote(inner_ip)))


def show(a: bytes, b: bytes) -> str:
    return Ether(a).show(dump=True) + "\n---- expected\n" + Ether(b).show(dump=True)


# ---- time exceeded, from the environment -----------------------------------------------------
@pytest.mark.parametrize("l4", [
    UDP(sport=41100, dport=33434) / Raw(b"traceroute probe payload"),  # traceroute's probe
    TCP(sport=41101, dport=80, flags="S", options=[("MSS", 1460)]),
    ICMP(type=8, id=77, seq=1) / Raw(b"ping"),
    UDP(sport=41102, dport=7),  # shorter than the header and 64 bits: quoted whole
], ids=["udp", "tcp-syn", "echo", "short"])
def test_ttl_1_from_an_environment_is_answered_through_the_tunnel(env, l4):
    frame = tunnel(env_frame(l4, ttl=1))
    got, out, d = env.run("xdp_fabric", bytes(frame))
    assert (got, d.get("tx_icmp_time_exceeded"), d.get("xdp_tx")) == ("TX", 1, 1), d
    want = answer_into_tunnel(env, frame, ICMP(type=11, code=0))
    assert out == want, show(out, want)
    assert env.dp.find_flow(WORKER, VNI_A, ENV_IP, 41100, SERVER, 33434, 17) is None


def test_ttl_0_is_answered_too(env):
    frame = tunnel(env_frame(UDP(sport=41103, dport=33435), ttl=0))
    got, out, d = env.run("xdp_fabric", bytes(frame))
    assert (got, d.get("tx_icmp_time_exceeded")) == ("TX", 1), d


def test_time_exceeded_over_geneve_with_options_and_ip_options(env):
    """The answer goes back in the tunnel type it came in, with an option-less GENEVE header;
    the quote keeps the environment's IP options (its header is quoted whole)."""
    inner = (Ether(src=ENV_MAC, dst=GATEWAY_MAC) /
             IP(src=ENV_IP, dst=SERVER, ttl=1, options=b"\x01\x01\x01\x00") /
             UDP(sport=41104, dport=33436) / Raw(b"p" * 12))
    gen = GENEVE(vni=VNI_A, proto=0x6558, optionlen=1, options=b"\x00\x01\x02\x00")
    frame = (Ether(src=WORKER_MAC, dst=FABRIC_MAC_SEEN) / IP(src=WORKER, dst=FABRIC_IP, id=9) /
             UDP(sport=40000, dport=6081) / gen / inner)
    got, out, d = env.run("xdp_fabric", bytes(frame))
    assert (got, d.get("tx_icmp_time_exceeded")) == ("TX", 1), d
    want = answer_into_tunnel(env, frame, ICMP(type=11, code=0),
                              tunnel_hdr=GENEVE(vni=VNI_A, proto=0x6558), dport=6081)
    assert out == want, show(out, want)


def test_the_tunnel_gateway_is_the_answers_source(env, settings):
    settings(tunnel_gateway="100.100.100.1")
    got, out, d = env.run("xdp_fabric", bytes(tunnel(env_frame(UDP(sport=41105, dport=1),
                                                                ttl=1))))
    assert got == "TX" and Ether(out)[VXLAN][IP].src == "100.100.100.1", d


@pytest.mark.parametrize("pkt, why", [
    (env_frame(ICMP(type=3, code=3) / Raw(b"q" * 28), ttl=1), "an ICMP error"),
    (env_frame(ICMP(type=42) / Raw(b"q" * 8), ttl=1), "an ICMP type it does not know"),
    (env_frame(UDP(sport=41106, dport=1), ttl=1, src="127.0.0.1"), "a loopback source"),
    (env_frame(UDP(sport=41107, dport=1), ttl=1, src="0.1.2.3"), "a source in 0/8"),
    (env_frame(UDP(sport=41108, dport=1), ttl=1, src="224.0.0.9"), "a multicast source"),
    (env_frame(UDP(sport=41109, dport=1), ttl=1, dst="239.1.1.1"), "a multicast destination"),
    (Ether(src=ENV_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src=ENV_IP, dst=SERVER, ttl=1) /
     UDP(sport=41112, dport=1), "a link-layer broadcast"),
    (Ether(src=ENV_MAC, dst="01:00:5e:00:00:09") / IP(src=ENV_IP, dst=SERVER, ttl=1) /
     UDP(sport=41113, dport=1), "a link-layer multicast"),
    (Ether(src=ENV_MAC, dst=GATEWAY_MAC) / IP(src=ENV_IP, dst=SERVER, ttl=1, proto=1, len=20) /
     Raw(b"\0" * 8), "an ICMP datagram too short for its type (Ethernet padding after it)"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_no_answer_where_rfc_1812_forbids_one(env, pkt, why):
    got, _, d = env.run("xdp_fabric", bytes(tunnel(pkt)))
    assert (got, d.get("drop_ttl_expired"), d.get("xdp_tx")) == ("DROP", 1, None), (why, d)


def test_no_answer_for_a_vni_without_eni_or_a_worker_not_placed(env):
    got, _, d = env.run("xdp_fabric", bytes(tunnel(env_frame(UDP(sport=41110, dport=1), ttl=1),
                                                   vni=4242)))
    assert (got, d.get("drop_unknown_vni")) == ("DROP", 1), d
    env.dp.sync_placements({})
    try:
        got, _, d = env.run("xdp_fabric", bytes(tunnel(env_frame(UDP(sport=41111, dport=1),
                                                                 ttl=1))))
        assert (got, d.get("drop_worker_not_placed")) == ("DROP", 1), d
    finally:
        env.dp.sync_placements({(WORKER, v): 1 for v in (VNI_A, 200, 300)})


# ---- fragmentation needed, from the environment ----------------------------------------------
@pytest.mark.parametrize("l4", [
    UDP(sport=41120, dport=7) / Raw(b"d" * 1401),
    TCP(sport=41121, dport=80, flags="S") / Raw(b"d" * 1389),
], ids=["udp", "tcp"])
def test_too_big_for_the_vpc_link_with_df_gets_frag_needed_with_its_mtu(env, vpc_mtu, l4):
    vpc_mtu(1400)
    frame = tunnel(env_frame(l4, flags="DF"))
    assert len(frame[VXLAN][IP]) > 1400
    got, out, d = env.run("xdp_fabric", bytes(frame))
    assert (got, d.get("tx_icmp_frag_needed"), d.get("xdp_redirect")) == ("TX", 1, None), d
    want = answer_into_tunnel(env, frame, ICMP(type=3, code=4, nexthopmtu=1400))
    assert out == want, show(out, want)
    # the same packet once it fits goes through: the flow it opened is there
    head = l4.copy()
    head.remove_payload()
    got, _, d = env.run("xdp_fabric", bytes(tunnel(env_frame(head / Raw(b"d" * 100),
                                                             flags="DF"))))
    assert got == "REDIRECT", d


def test_too_big_for_the_vpc_link_without_df_is_dropped_and_counted(env, vpc_mtu):
    vpc_mtu(1400)
    got, _, d = env.run("xdp_fabric", bytes(tunnel(env_frame(UDP(sport=41122, dport=7) /
                                                             Raw(b"d" * 1401)))))
    assert (got, d.get("drop_vpc_mtu"), d.get("xdp_redirect")) == ("DROP", 1, None), d


def test_exactly_the_vpc_mtu_passes(env, vpc_mtu):
    vpc_mtu(1400)
    got, _, d = env.run("xdp_fabric", bytes(tunnel(env_frame(UDP(sport=41123, dport=7) /
                                                             Raw(b"d" * 1372), flags="DF"))))
    assert (got, d.get("fwd_new_flow")) == ("REDIRECT", 1), d


# ---- from the VPC ----------------------------------------------------------------------------
def open_udp(env, sport: int) -> Ether:
    got, out, d = env.run("xdp_fabric", bytes(tunnel(env_frame(UDP(sport=sport, dport=7) /
                                                             Raw(b"hi")))))
    assert got == "REDIRECT", d
    return Ether(out)


def vpc_reply(env, fwd: Ether, payload: bytes, **ip) -> Ether:
    return (Ether(src=GW_A, dst=env.vpc_if["vpca"]["mac"]) /
            IP(src=fwd[IP].dst, dst=fwd[IP].src, **ip) /
            UDP(sport=fwd[UDP].dport, dport=fwd[UDP].sport) / Raw(payload))


def answer_into_vpc(env, frame: Ether, icmp: ICMP) -> bytes:
    return bytes(Ether(src=env.vpc_if["vpca"]["mac"], dst=GW_A) /
                 IP(src=ENI_A, dst=frame[IP].src, tos=0xC0, id=0, ttl=64, flags="DF") / icmp /
                 Raw(quote(frame[IP])))


def test_ttl_1_from_the_vpc_for_a_flow_is_answered_from_the_eni_address(env):
    fwd = open_udp(env, 41130)
    frame = vpc_reply(env, fwd, b"answer", ttl=1)
    got, out, d = env.run("xdp_vpc", bytes(frame), "vpca")
    assert (got, d.get("tx_icmp_time_exceeded"), d.get("xdp_tx")) == ("TX", 1, 1), d
    want = answer_into_vpc(env, frame, ICMP(type=11, code=0))
    assert out == want, show(out, want)


def test_ttl_1_from_the_vpc_without_a_flow_is_not_answered(env):
    frame = (Ether(src=GW_A, dst=env.vpc_if["vpca"]["mac"]) / IP(src=SERVER, dst=ENI_A, ttl=1) /
             UDP(sport=7, dport=1999))
    got, _, d = env.run("xdp_vpc", bytes(frame), "vpca")
    assert (got, d.get("drop_no_flow"), d.get("xdp_tx")) == ("DROP", 1, None), d


def test_too_big_for_the_tunnel_with_df_gets_frag_needed_with_what_fits(env, fabric_mtu):
    fwd = open_udp(env, 41131)
    fabric_mtu(1500)
    frame = vpc_reply(env, fwd, b"r" * (1451 - 28), flags="DF")
    assert len(frame[IP]) == 1451
    got, out, d = env.run("xdp_vpc", bytes(frame), "vpca")
    assert (got, d.get("tx_icmp_frag_needed")) == ("TX", 1), d
    want = answer_into_vpc(env, frame, ICMP(type=3, code=4, nexthopmtu=1450))
    assert out == want, show(out, want)
    # 1450 fits, with the same flow
    got, _, d = env.run("xdp_vpc", bytes(vpc_reply(env, fwd, b"r" * (1450 - 28), flags="DF")),
                        "vpca")
    assert (got, d.get("rev_established")) == ("REDIRECT", 1), d


def test_too_big_for_the_tunnel_without_df_is_dropped_and_counted(env, fabric_mtu):
    fwd = open_udp(env, 41132)
    fabric_mtu(1500)
    got, _, d = env.run("xdp_vpc", bytes(vpc_reply(env, fwd, b"r" * 1500)), "vpca")
    assert (got, d.get("drop_fabric_mtu"), d.get("xdp_tx")) == ("DROP", 1, None), d


# ---- the rate ---------------------------------------------------------------------------------
def test_the_node_answers_at_most_its_burst_then_its_rate_per_cpu(env, settings):
    """One CPU, rate 1/s: after a second idle the bucket holds ICMP_BURST (50) answers; the
    next ones in the same instant are dropped and counted. Rate 0 answers nothing."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        settings(icmp_rate=1)
        time.sleep(1.2)
        frame = bytes(tunnel(env_frame(UDP(sport=41140, dport=1), ttl=1)))
        verdicts = [env.run("xdp_fabric", frame) for _ in range(ipv4.ICMP_BURST + 10)]
        sent = sum(1 for v, _, d in verdicts if v == "TX" and d.get("tx_icmp_time_exceeded"))
        limited = sum(1 for v, _, d in verdicts if d.get("drop_icmp_ratelimit"))
        assert (sent, limited) == (ipv4.ICMP_BURST, 10)
        settings(icmp_rate=0)
        got, _, d = env.run("xdp_fabric", frame)
        assert (got, d.get("drop_icmp_ratelimit")) == ("DROP", 1), d
    finally:
        os.sched_setaffinity(0, cpus)


# ---- MSS clamping can be turned off ----------------------------------------------------------
def test_mss_clamp_off_leaves_the_syn_as_it_is(env, vpc_mtu, settings):
    vpc_mtu(1400)
    settings(mss_clamp=False)
    syn = TCP(sport=41150, dport=80, flags="S", options=[("MSS", 8960)])
    got, out, d = env.run("xdp_fabric", bytes(tunnel(env_frame(syn))))
    assert got == "REDIRECT", d
    assert dict(Ether(out)[TCP].options)["MSS"] == 8960
    settings(mss_clamp=True)
    syn.sport = 41151
    got, out, d = env.run("xdp_fabric", bytes(tunnel(env_frame(syn))))
    assert dict(Ether(out)[TCP].options)["MSS"] == 1360


# ---- an environment's ICMP error that cannot cross ------------------------------------------
def env_error(sport: int, quoted_payload: int, **ip) -> Ether:
    """Port unreachable from the environment about the server's reply to its flow `sport`."""
    quoted = IP(src=SERVER, dst=ENV_IP) / UDP(sport=7, dport=sport) / Raw(b"q" * quoted_payload)
    return tunnel(env_frame(ICMP(type=3, code=3) / Raw(bytes(quoted)), **ip))


def test_an_environments_error_too_big_for_the_vpc_link_is_dropped_not_redirected(env, vpc_mtu):
    open_udp(env, 41160)
    vpc_mtu(1400)
    got, _, d = env.run("xdp_fabric", bytes(env_error(41160, 1400, flags="DF")))
    assert (got, d.get("drop_vpc_mtu"), d.get("xdp_redirect")) == ("DROP", 1, None), d
    got, _, d = env.run("xdp_fabric", bytes(env_error(41160, 1300)))
    assert (got, d.get("fwd_icmp_error")) == ("REDIRECT", 1), d


def test_an_environments_error_in_fragments_is_malformed(env):
    open_udp(env, 41161)
    got, _, d = env.run("xdp_fabric", bytes(env_error(41161, 64, flags="MF")))
    assert (got, d.get("drop_icmp_error_malformed")) == ("DROP", 1), d
