"""xdp_fabric, row by row: the packet in, the verdict, the bytes out, the counter that moves."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from conftest import (ENI_A, ENV_IP, ENV_MAC, FABRIC_IP, GATEWAY_MAC, GW_A, SERVER, VNI_A,
                      VNI_TINY, WORKER, WORKER_MAC, env_frame, tunnel)

GENEVE_HDR = bytes([0x02, 0x00, 0x65, 0x58, 0x00, 0x00, VNI_A, 0x00])  # 2 words of options
GENEVE_OPT = bytes([0x01, 0x02, 0x03, 0x01, 0xAA, 0xBB, 0xCC, 0xDD])


def geneve(inner, first=GENEVE_HDR, opts=GENEVE_OPT):
    return (Ether(src=WORKER_MAC, dst="02:00:00:00:00:01") / IP(src=WORKER, dst=FABRIC_IP) /
            UDP(sport=40001, dport=6081) / Raw(first + opts) / inner)


def tcp(dport=80, sport=33000, **ip):
    return env_frame(TCP(sport=sport, dport=dport, flags="S"), **ip)


# description, packet, verdict, counter that must move by one
ROWS = [
    ("plain UDP to another port goes to the kernel", Ether() / IP(src=WORKER, dst=FABRIC_IP) /
     UDP(dport=53), "PASS", "pass_not_tunnel"),
    ("tunnel traffic for another address goes to the kernel", Ether() /
     IP(src=WORKER, dst="100.64.0.99") / UDP(dport=4789) / VXLAN(vni=VNI_A) / tcp(), "PASS",
     "pass_not_tunnel"),
    ("IPv6 outer goes to the kernel", Ether() / IPv6() / UDP(dport=4789), "PASS", "pass_not_tunnel"),
    ("outer fragment goes to the kernel", Ether() / IP(src=WORKER, dst=FABRIC_IP, flags="MF") /
     UDP(dport=4789) / VXLAN(vni=VNI_A) / tcp(), "PASS", "pass_outer_fragment"),
    ("unregistered worker is dropped", tunnel(tcp(), worker="100.64.0.77"), "DROP",
     "drop_unknown_worker"),
    ("unknown VNI is dropped", tunnel(tcp(), vni=4242), "DROP", "drop_unknown_vni"),
    ("VXLAN without the I flag is dropped", Ether(src=WORKER_MAC) / IP(src=WORKER, dst=FABRIC_IP) /
     UDP(dport=4789) / VXLAN(vni=VNI_A, flags=0) / tcp(), "DROP", "drop_vxlan_no_i_flag"),
    ("GENEVE version 1 is dropped", geneve(tcp(), bytes([0x42]) + GENEVE_HDR[1:]), "DROP",
     "drop_geneve_version"),
    ("GENEVE carrying IPv4 instead of Ethernet is dropped",
     geneve(tcp(), GENEVE_HDR[:2] + b"\x08\x00" + GENEVE_HDR[4:]), "DROP", "drop_geneve_not_ether"),
    ("GENEVE control (O bit) is dropped", geneve(tcp(), GENEVE_HDR[:1] + b"\x80" + GENEVE_HDR[2:]),
     "DROP", "drop_geneve_control"),
    ("GENEVE with critical options is dropped",
     geneve(tcp(), GENEVE_HDR[:1] + b"\x40" + GENEVE_HDR[2:]), "DROP", "drop_geneve_critical"),
    ("GENEVE options longer than the packet", geneve(b"", bytes([0x3F]) + GENEVE_HDR[1:], b""),
     "DROP", "drop_tunnel_truncated"),
    ("inner IPv6 is dropped", tunnel(Ether(src=ENV_MAC) / IPv6()), "DROP", "drop_inner_not_ipv4"),
    ("inner IHL 4 is dropped", tunnel(tcp(ihl=4)), "DROP", "drop_inner_bad_ip"),
    ("a later fragment whose first was never seen is dropped",
     tunnel(env_frame(Raw(b"x" * 16), proto=6, flags="MF", frag=3)), "DROP",
     "drop_frag_no_first"),
    ("a first fragment too short for its TCP header is dropped (RFC 1858)",
     tunnel(env_frame(Raw(bytes(TCP(sport=33000, dport=80))[:16]) / Raw(b"\0" * 4), proto=6,
                      flags="MF", len=20 + 16)), "DROP", "drop_frag_tiny"),
    ("inner TTL 1 is answered with time exceeded", tunnel(tcp(ttl=1)), "TX",
     "tx_icmp_time_exceeded"),
    ("inner TTL 1 on an ICMP error gets no answer (RFC 1812)",
     tunnel(env_frame(ICMP(type=3, code=3) / Raw(b"q" * 28), ttl=1)), "DROP",
     "drop_ttl_expired"),
    ("inner GRE is dropped", tunnel(env_frame(Raw(b"x" * 20), proto=47)), "DROP",
     "drop_proto_unsupported"),
    ("ICMP other than echo request is dropped", tunnel(env_frame(ICMP(type=13))), "DROP",
     "drop_icmp_unsupported"),
    ("SG: TCP port outside every range is denied", tunnel(tcp(dport=22)), "DROP", "drop_sg_denied"),
    ("SG: UDP 7 to another host is denied (CIDR)", tunnel(env_frame(UDP(sport=5000, dport=7),
                                                                    dst="10.0.0.11")), "DROP",
     "drop_sg_denied"),
    ("SG: TCP to outside the VPC CIDR is denied", tunnel(tcp(dst="192.168.1.1")), "DROP",
     "drop_sg_denied"),
    ("ARP reply inside the tunnel needs no answer", tunnel(Ether(src=ENV_MAC) /
     ARP(op=2, psrc=ENV_IP, pdst=SERVER)), "DROP", "drop_arp_ignored"),
    ("gratuitous ARP gets no answer", tunnel(Ether(src=ENV_MAC) / ARP(op=1, psrc=ENV_IP,
                                                                     pdst=ENV_IP)), "DROP",
     "drop_arp_ignored"),
]


@pytest.mark.parametrize("desc,pkt,verdict,counter", ROWS, ids=[r[0] for r in ROWS])
def test_row(env, desc, pkt, verdict, counter):
    got, out, delta = env.run("xdp_fabric", bytes(pkt))
    assert got == verdict, delta
    assert delta.get(counter) == 1, delta
    assert delta.get(f"xdp_{verdict.lower()}") == 1
    if verdict == "PASS":
        assert out == bytes(pkt), "the kernel must get the packet untouched"


def _truncations():
    p = tunnel(tcp())
    raw = bytes(p)
    # header boundaries: outer eth 14, ip 34, udp 42, vxlan 50, inner eth 64, ip 84, tcp 104
    # (an Ethernet header itself cannot be cut: the kernel hands XDP nothing shorter than 14 B)
    cases = [(30, "PASS", "pass_malformed_outer"),
             (38, "PASS", "pass_malformed_outer"), (46, "DROP", "drop_tunnel_truncated"),
             (60, "DROP", "drop_inner_truncated"), (80, "DROP", "drop_inner_truncated"),
             (100, "DROP", "drop_inner_truncated")]
    vlan_cut = bytes(Ether(src=WORKER_MAC, type=0x8100)) + b"\x00\x05"

    def cut(n: int) -> bytes:
        """The first n bytes, with IPv4 total lengths that say so: what each header's own bounds
        check meets (a length longer than the frame is a row of its own)."""
        b = bytearray(raw[:n])
        for ip_at in (14, 64):
            if n >= ip_at + 4:
                b[ip_at + 2:ip_at + 4] = (n - ip_at).to_bytes(2, "big")
        return bytes(b)

    return [(vlan_cut, "PASS", "pass_malformed_outer")] + [(cut(n), v, c) for n, v, c in cases]


@pytest.mark.parametrize("raw,verdict,counter", _truncations(),
                         ids=["outer-vlan", "outer-ip", "outer-udp", "vxlan", "inner-eth",
                              "inner-ip", "inner-tcp"])
def test_truncation_at_every_header(env, raw, verdict, counter):
    got, out, delta = env.run("xdp_fabric", raw)
    assert (got, delta.get(counter)) == (verdict, 1), delta


def expected_forward(inner, nat_port: int, vpc_mac: str):
    """The inner frame after SNAT, with checksums computed from scratch by scapy."""
    e = inner.copy()
    e[Ether].src, e[Ether].dst = vpc_mac, GW_A
    e[IP].src = ENI_A
    e[IP].ttl -= 1
    del e[IP].chksum
    l4 = e[IP].payload
    if isinstance(l4, ICMP):
        l4.id = nat_port
    else:
        l4.sport = nat_port
    if not (isinstance(l4, UDP) and inner[UDP].chksum == 0):
        del l4.chksum
    return bytes(Ether(bytes(e)))


def _flow(env, inner, vni=VNI_A):
    l4 = inner[IP].payload
    sport = l4.id if isinstance(l4, ICMP) else l4.sport
    for f in env.dp.flows(vni=vni):
        if (f["env_addr"], f["remote"], f["env_port"], f["proto"]) == \
                (inner[IP].src, inner[IP].dst, sport, inner[IP].proto):
            return f
    raise AssertionError("flow not in the flow table")


FORWARD = [
    ("VXLAN TCP SYN allowed by the first group", tunnel, tcp(sport=33001)),
    ("VXLAN TCP allowed by the second group (union)", tunnel, tcp(sport=33002, dport=444)),
    ("VXLAN UDP echo", tunnel, env_frame(UDP(sport=5001, dport=7) / Raw(b"ping"))),
    ("VXLAN UDP without checksum stays without", tunnel,
     env_frame(UDP(sport=5002, dport=7, chksum=0) / Raw(b"x"))),
    ("VXLAN ICMP echo", tunnel, env_frame(ICMP(type=8, id=777, seq=1) / Raw(b"abc"))),
    ("inner IPv4 options are carried", tunnel,
     env_frame(TCP(sport=33003, dport=80), options=[b"\x01\x01\x01\x00"])),
    ("GENEVE with options, TCP", geneve, tcp(sport=33004)),
    ("VXLAN behind two VLAN tags", lambda i: Ether(src=WORKER_MAC, dst="02:00:00:00:00:01") /
     Dot1Q(vlan=5) / Dot1Q(vlan=6) / IP(src=WORKER, dst=FABRIC_IP) / UDP(dport=4789) /
     VXLAN(vni=VNI_A) / i, tcp(sport=33005)),
    ("outer IPv4 options are skipped", lambda i: Ether(src=WORKER_MAC) /
     IP(src=WORKER, dst=FABRIC_IP, options=[b"\x01\x01\x01\x00"]) / UDP(dport=4789) /
     VXLAN(vni=VNI_A) / i, tcp(sport=33006)),
]


@pytest.mark.parametrize("desc,wrap,inner", FORWARD, ids=[r[0] for r in FORWARD])
def test_forward_snat(env, desc, wrap, inner):
    inner = Ether(bytes(inner))
    got, out, delta = env.run("xdp_fabric", bytes(wrap(inner)))
    assert got == "REDIRECT", delta
    assert delta.get("fwd_new_flow") == 1, delta
    f = _flow(env, inner)
    port = f["nat_port"]
    assert 1024 <= port <= 65535
    assert (f["worker"], f["vni"], f["eni_addr"]) == (WORKER, VNI_A, ENI_A)
    assert out == expected_forward(inner, port, env.vpc_if["vpca"]["mac"])
    # the same packet again is an established flow with the same translation
    got2, out2, delta2 = env.run("xdp_fabric", bytes(wrap(inner)))
    assert (got2, delta2.get("fwd_established")) == ("REDIRECT", 1)
    assert out2 == out


def test_tunnel_arp_is_answered_as_gateway(env):
    req = tunnel(Ether(src=ENV_MAC, dst="ff:ff:ff:ff:ff:ff") /
                 ARP(op=1, hwsrc=ENV_MAC, psrc=ENV_IP, pdst="10.0.77.77"))
    got, out, delta = env.run("xdp_fabric", bytes(req))
    assert (got, delta.get("tx_arp_tunnel")) == ("TX", 1)
    o = Ether(out)
    assert (o[IP].src, o[IP].dst, o[UDP].dport, o[VXLAN].vni) == (FABRIC_IP, WORKER, 4789, VNI_A)
    assert o[Ether].dst == WORKER_MAC
    a = o[VXLAN].payload
    assert a[Ether].dst == ENV_MAC and a[Ether].src == GATEWAY_MAC
    assert (a[ARP].op, a[ARP].hwsrc, a[ARP].psrc, a[ARP].pdst) == (2, GATEWAY_MAC, "10.0.77.77",
                                                                   ENV_IP)
    chk = o[IP].chksum
    del o[IP].chksum
    assert Ether(bytes(o))[IP].chksum == chk


def test_port_exhaustion_is_per_destination(env):
    # VNI_TINY owns ports 2000-2001: two flows to one destination fill it ...
    for sport in (41000, 41001):
        got, _, d = env.run("xdp_fabric", bytes(tunnel(tcp(sport=sport), vni=VNI_TINY)))
        assert (got, d.get("fwd_new_flow")) == ("REDIRECT", 1), d
    got, _, d = env.run("xdp_fabric", bytes(tunnel(tcp(sport=41002), vni=VNI_TINY)))
    assert (got, d.get("drop_port_exhausted")) == ("DROP", 1), d
    assert env.dp.eni_stats(VNI_TINY)[VNI_TINY]["port_alloc_failed"] >= 1
    # ... but the same ports still serve another destination
    got, _, d = env.run("xdp_fabric", bytes(tunnel(tcp(sport=41002, dst="10.0.0.11"),
                                                   vni=VNI_TINY)))
    assert (got, d.get("fwd_new_flow")) == ("REDIRECT", 1), d
    ports = sorted(f["nat_port"] for f in env.dp.flows(vni=VNI_TINY))
    assert set(ports) <= {2000, 2001}
