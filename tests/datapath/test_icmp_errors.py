"""ICMP errors from the VPC about a flow (RFC 5508 REQ-3/4): translated back to the environment
through the tunnel, every checksum right. Expected frames are built and checksummed by scapy,
never by the code under test."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, ICMPerror, IPerror, UDPerror
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.utils import checksum

from conftest import (ENI_A, ENV_IP, ENV_MAC, FABRIC_IP, GATEWAY_MAC, GW_A, SERVER, VNI_A,
                      WORKER, WORKER_MAC, env_frame, tunnel)

ROUTER = "10.0.0.1"  # the VPC's router, which reports the path's trouble


def open_flow(env, l4) -> Ether:
    got, out, d = env.run("xdp_fabric", bytes(tunnel(env_frame(l4))))
    assert got == "REDIRECT", d
    return Ether(out)


def error_about(env, fwd: Ether, icmp: ICMP, quote_bytes: int | None = None, src=ROUTER,
                dst=None) -> Ether:
    """What the VPC sends the ENI about the forwarded packet `fwd`: an ICMP error quoting it
    (whole, or its first quote_bytes bytes)."""
    quoted = bytes(fwd[IP])
    if quote_bytes is not None:
        quoted = quoted[:quote_bytes]
    return (Ether(src=GW_A, dst=env.vpc_if["vpca"]["mac"]) /
            IP(src=src, dst=dst or fwd[IP].src, ttl=64) / icmp / Raw(quoted))


def expected_inner(err: Ether, env_port: int, quote_env: bytes) -> bytes:
    """The error as the environment must see it: for it, quoting its own packet. The ICMP header
    keeps its type, code and second word (next-hop MTU, pointer); scapy sums it again."""
    icmp = bytes(err[ICMP])
    body = icmp[:2] + b"\0\0" + icmp[4:8] + quote_env
    body = body[:2] + checksum(body).to_bytes(2, "big") + body[4:]
    exp = (Ether(src=GATEWAY_MAC, dst=ENV_MAC) / IP(src=err[IP].src, dst=ENV_IP, ttl=63,
                                                     id=err[IP].id, proto=1) / Raw(body))
    return bytes(exp)


def env_quote(fwd: Ether, env_port: int, quote_bytes: int | None = None,
              l4_checksum: bool = True) -> bytes:
    """The forwarded packet with the environment's address and port put back, every checksum
    computed again by scapy (the quoted transport checksum only when the whole packet is
    quoted, as it covers the payload)."""
    q = IP(bytes(fwd[IP]))
    q.src = ENV_IP
    del q.chksum
    l4 = q.payload
    if isinstance(l4, (TCP, UDP)):
        l4.sport = env_port
    else:
        l4.id = env_port
    if l4_checksum:
        del l4.chksum
    raw = bytes(q)
    return raw[:quote_bytes] if quote_bytes is not None else raw


def check_outer(o: Ether) -> None:
    assert (o[Ether].dst, o[IP].src, o[IP].dst, o[UDP].dport, o[VXLAN].vni) == \
        (WORKER_MAC, FABRIC_IP, WORKER, 4789, VNI_A)


@pytest.mark.parametrize("l4, env_port, icmp", [
    (UDP(sport=37001, dport=7) / Raw(b"datagram"), 37001, ICMP(type=3, code=4, nexthopmtu=1400)),
    (TCP(sport=37002, dport=80, flags="S", seq=7) / Raw(b"syn data"), 37002,
     ICMP(type=3, code=4, nexthopmtu=1400)),
    (UDP(sport=37003, dport=7) / Raw(b"closed"), 37003, ICMP(type=3, code=3)),  # port unreach
    (TCP(sport=37004, dport=80, flags="S"), 37004, ICMP(type=11, code=0)),      # time exceeded
    (ICMP(type=8, id=37005, seq=1) / Raw(b"ping"), 37005, ICMP(type=3, code=1)),  # host unreach
    (UDP(sport=37006, dport=7) / Raw(b"p"), 37006, ICMP(type=12, code=0, ptr=9)),  # param prob
], ids=["frag-needed-udp", "frag-needed-tcp", "port-unreachable", "time-exceeded-tcp",
        "host-unreachable-echo", "parameter-problem"])
def test_an_error_about_a_flow_reaches_its_environment_exactly(env, l4, env_port, icmp):
    fwd = open_flow(env, l4)
    err = error_about(env, fwd, icmp)
    got, out, d = env.run("xdp_vpc", bytes(err), "vpca")
    assert (got, d.get("rev_icmp_error"), d.get("xdp_redirect")) == ("REDIRECT", 1, 1), d
    o = Ether(out)
    check_outer(o)
    inner = bytes(o[VXLAN].payload)
    assert inner == expected_inner(err, env_port, env_quote(fwd, env_port)), \
        (Ether(inner).show(dump=True))
    # the flow's own counters see it, its liveness does not
    f = env.dp.flows()
    assert any(x["env_port"] == env_port and x["rx_packets"] == 1 for x in f)


def test_a_short_quote_keeps_the_tcp_checksum_it_does_not_carry(env):
    """Routers may quote only the header and 8 bytes (RFC 792): no TCP checksum to fix then."""
    fwd = open_flow(env, TCP(sport=37010, dport=80, flags="S"))
    err = error_about(env, fwd, ICMP(type=3, code=4, nexthopmtu=1300), quote_bytes=28)
    got, out, d = env.run("xdp_vpc", bytes(err), "vpca")
    assert (got, d.get("rev_icmp_error")) == ("REDIRECT", 1), d
    inner = bytes(Ether(out)[VXLAN].payload)
    assert inner == expected_inner(err, 37010, env_quote(fwd, 37010, 28, l4_checksum=False))


def _age(env, fwd: Ether) -> None:
    """Make the flow of a forwarded packet idle for ages (its entry's last_seen_ns, and its
    flow_hot slot's, which moves on ahead of the entry: emptied)."""
    m, hot = env.dp.map("flows"), env.dp.map("flow_hot")
    for k, v in m.items():
        if k["eni_port"] == fwd[IP].payload.sport and k["remote"] == fwd[IP].dst:
            m.update(k, {**v, "last_seen_ns": 1})
            for i, raw in hot.items_raw():
                if raw[:16] == m._key(k):
                    hot.update(i, bytes(len(raw)))
            return
    raise AssertionError("no such flow")


def test_errors_that_name_no_live_flow_are_dropped_and_counted(env):
    fwd = open_flow(env, UDP(sport=37020, dport=7) / Raw(b"x"))
    stranger = fwd.copy()
    stranger[UDP].sport = fwd[UDP].sport ^ 0x5555  # a port no flow holds
    cases = [
        (error_about(env, stranger, ICMP(type=3, code=3)), "drop_icmp_error_no_flow"),
        (error_about(env, fwd, ICMP(type=3, code=3), quote_bytes=24), "drop_icmp_error_malformed"),
        (error_about(env, fwd, ICMP(type=3, code=3), quote_bytes=10), "drop_icmp_error_malformed"),
    ]
    other_src = fwd.copy()
    other_src[IP].src = "10.0.1.99"  # quotes a packet the ENI did not send
    cases.append((error_about(env, other_src, ICMP(type=3, code=3), dst=ENI_A),
                  "drop_icmp_error_no_flow"))
    about_an_error = Ether(src=GW_A, dst=env.vpc_if["vpca"]["mac"]) / IP(src=ROUTER, dst=ENI_A) / \
        ICMP(type=3, code=1) / IPerror(src=ENI_A, dst=SERVER) / ICMPerror(type=3, code=3)
    cases.append((about_an_error, "drop_icmp_error_no_flow"))  # never an error about an error
    for pkt, reason in cases:
        got, _, d = env.run("xdp_vpc", bytes(pkt), "vpca")
        assert (got, d.get(reason)) == ("DROP", 1), (reason, d)
    _age(env, fwd)
    got, _, d = env.run("xdp_vpc", bytes(error_about(env, fwd, ICMP(type=3, code=3))), "vpca")
    assert (got, d.get("drop_icmp_error_no_flow")) == ("DROP", 1), d  # the flow expired


def test_an_error_for_an_address_that_is_no_enis_goes_to_the_kernel(env):
    pkt = Ether(src=GW_A) / IP(src=ROUTER, dst="10.0.9.9") / ICMP(type=3, code=3) / \
        IPerror(src="10.0.9.9", dst=SERVER) / UDPerror(sport=1, dport=7)
    got, out, d = env.run("xdp_vpc", bytes(pkt), "vpca")
    assert (got, d.get("pass_vpc_not_eni"), out) == ("PASS", 1, bytes(pkt))


# ---- from an environment, about a packet it received from the VPC ----------------------------
def _env_error(quote: bytes, icmp: ICMP, src=ENV_IP) -> bytes:
    return bytes(tunnel(Ether(src=ENV_MAC, dst=GATEWAY_MAC) / IP(src=src, dst=SERVER, ttl=64) /
                        icmp / Raw(quote)))


@pytest.mark.parametrize("l4, env_port, quote_bytes", [
    (UDP(sport=38001, dport=7) / Raw(b"question"), 38001, None),   # port unreachable, whole
    (TCP(sport=38002, dport=80, flags="S"), 38002, None),
    (UDP(sport=38003, dport=7) / Raw(b"long answer"), 38003, 28),  # header + 8 bytes only
], ids=["udp-whole", "tcp-whole", "udp-short"])
def test_an_environments_error_about_a_reply_reaches_the_vpc_exactly(env, l4, env_port,
                                                                      quote_bytes):
    fwd = open_flow(env, l4)
    nat_port = fwd[IP].payload.sport
    r4 = (UDP(sport=7, dport=nat_port) / Raw(b"answer") if UDP in fwd else
          TCP(sport=80, dport=nat_port, flags="SA", seq=9, ack=1))
    rep = Ether(src=GW_A, dst=env.vpc_if["vpca"]["mac"]) / IP(src=SERVER, dst=ENI_A, ttl=64) / r4
    got, back, _ = env.run("xdp_vpc", bytes(rep), "vpca")
    assert got == "REDIRECT"
    seen = bytes(Ether(back)[VXLAN].payload[IP])  # the reply as the environment got it
    quote = seen if quote_bytes is None else seen[:quote_bytes]
    got, out, d = env.run("xdp_fabric", _env_error(quote, ICMP(type=3, code=3)))
    assert (got, d.get("fwd_icmp_error"), d.get("xdp_redirect")) == ("REDIRECT", 1, 1), d
    # the VPC sees the error from the ENI, quoting what it sent (to the ENI's address and port)
    q = IP(bytes(rep[IP]))
    q.ttl = 63  # the node's hop, as the environment quoted it
    del q.chksum
    if quote_bytes is None:
        del q.payload.chksum
        qraw = bytes(q)
    else:
        qraw = bytes(q)[:quote_bytes]  # the transport checksum as the VPC sent it
    icmp = bytes([3, 3, 0, 0, 0, 0, 0, 0]) + qraw
    icmp = icmp[:2] + checksum(icmp).to_bytes(2, "big") + icmp[4:]
    want = bytes(Ether(src=env.vpc_if["vpca"]["mac"], dst=GW_A) /
                 IP(src=ENI_A, dst=SERVER, ttl=63, proto=1) / Raw(icmp))
    assert out == want, (Ether(out).show(dump=True), Ether(want).show(dump=True))


def test_an_environments_error_about_nothing_it_received_is_dropped(env):
    fwd = open_flow(env, UDP(sport=38010, dport=7) / Raw(b"x"))
    unknown = bytes(IP(src=SERVER, dst=ENV_IP) / UDP(sport=7, dport=38011))  # no such flow
    other_dst = bytes(IP(src=SERVER, dst="172.16.9.9") / UDP(sport=7, dport=38010))
    for quote, icmp, reason in (
            (unknown, ICMP(type=3, code=3), "drop_icmp_error_no_flow"),
            (other_dst, ICMP(type=3, code=3), "drop_icmp_error_no_flow"),
            (unknown[:24], ICMP(type=3, code=3), "drop_icmp_error_malformed"),
            (b"", ICMP(type=11, code=0), "drop_icmp_error_malformed")):
        got, _, d = env.run("xdp_fabric", _env_error(quote, icmp))
        assert (got, d.get(reason)) == ("DROP", 1), (reason, d)
    got, _, d = env.run("xdp_fabric", _env_error(b"", ICMP(type=13)))  # a timestamp request
    assert (got, d.get("drop_icmp_unsupported")) == ("DROP", 1), d
    assert fwd  # the flow itself is untouched


def test_ethernet_padding_is_no_part_of_a_quote(env):
    """An error whose IPv4 length ends inside the quoted transport header is cut short, whatever
    the frame's padding holds (RFC 792 asks for 8 bytes of the quoted datagram), both ways."""
    fwd = open_flow(env, UDP(sport=37030, dport=7) / Raw(b"pad"))
    quote = bytes(fwd[IP])[:24]  # the quoted header and half the UDP header
    rest = bytes(fwd[IP])[24:28]
    err = (Ether(src=GW_A, dst=env.vpc_if["vpca"]["mac"]) /
           IP(src=ROUTER, dst=ENI_A, len=20 + 8 + 24) / ICMP(type=3, code=3) / Raw(quote + rest))
    got, _, d = env.run("xdp_vpc", bytes(err), "vpca")
    assert (got, d.get("drop_icmp_error_malformed")) == ("DROP", 1), d
    # from the environment: a quote of a reply it got, cut the same way
    seen = bytes(IP(src=SERVER, dst=ENV_IP) / UDP(sport=7, dport=37030) / Raw(b"answer"))
    inner = (Ether(src=ENV_MAC, dst=GATEWAY_MAC) / IP(src=ENV_IP, dst=SERVER, len=20 + 8 + 24) /
             ICMP(type=3, code=3) / Raw(seen[:28]))
    got, _, d = env.run("xdp_fabric", bytes(tunnel(inner)))
    assert (got, d.get("drop_icmp_error_malformed")) == ("DROP", 1), d
