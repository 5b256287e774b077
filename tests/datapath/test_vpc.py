"""xdp_vpc: replies translated back and encapsulated to the worker that opened the flow;
everything else to an ENI dropped with a reason, everything not for an ENI left to the kernel."""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from conftest import (ENI_A, ENI_B, ENV_IP, ENV_MAC, FABRIC_IP, GATEWAY_MAC, GW_A, GW_B, SERVER,
                      VNI_A, VNI_B, WORKER, WORKER_MAC, env_frame, tunnel)


def open_flow(env, inner, vni):
    got, out, d = env.run("xdp_fabric", bytes(tunnel(inner, vni=vni)))
    assert got == "REDIRECT", d
    return Ether(out)


def reply_to(fwd_out, gw_mac, vpc_mac, payload=b"pong"):
    """What the VPC host sends back to the ENI for the forwarded packet."""
    ip = fwd_out[IP]
    l4 = ip.payload
    if isinstance(l4, TCP):
        r4 = TCP(sport=l4.dport, dport=l4.sport, flags="SA")
    elif isinstance(l4, UDP):
        r4 = UDP(sport=l4.dport, dport=l4.sport) / Raw(payload)
    else:
        r4 = ICMP(type=0, id=l4.id, seq=l4.seq) / Raw(payload)
    return Ether(src=gw_mac, dst=vpc_mac) / IP(src=ip.dst, dst=ip.src, ttl=64) / r4


def test_tcp_reply_reaches_the_environment(env):
    fwd = open_flow(env, env_frame(TCP(sport=34001, dport=80, flags="S")), VNI_A)
    rep = reply_to(fwd, GW_A, env.vpc_if["vpca"]["mac"])
    got, out, d = env.run("xdp_vpc", bytes(rep), "vpca")
    assert (got, d.get("rev_established")) == ("REDIRECT", 1), d
    o = Ether(out)
    assert (o[Ether].dst, o[IP].src, o[IP].dst, o[UDP].dport, o[VXLAN].vni, o[VXLAN].flags) == \
        (WORKER_MAC, FABRIC_IP, WORKER, 4789, VNI_A, 0x08)
    assert 49152 <= o[UDP].sport <= 65535 and o[UDP].chksum == 0
    inner = o[VXLAN].payload
    exp = rep.copy()
    exp[Ether].src, exp[Ether].dst = GATEWAY_MAC, ENV_MAC
    exp[IP].dst, exp[IP].ttl = ENV_IP, 63
    exp[TCP].dport = 34001
    del exp[IP].chksum, exp[TCP].chksum
    assert bytes(inner) == bytes(Ether(bytes(exp)))
    # the outer IPv4 checksum is valid
    c = o[IP].chksum
    del o[IP].chksum
    assert Ether(bytes(o))[IP].chksum == c


def test_icmp_echo_reply_and_geneve_flow_keep_their_tunnel(env):
    from test_fabric import geneve

    g = Ether(bytes(geneve(env_frame(ICMP(type=8, id=4242, seq=3)))))
    got, out, _ = env.run("xdp_fabric", bytes(g))
    assert got == "REDIRECT"
    rep = reply_to(Ether(out), GW_A, env.vpc_if["vpca"]["mac"])
    got, out, d = env.run("xdp_vpc", bytes(rep), "vpca")
    assert got == "REDIRECT", d
    o = Ether(out)
    assert o[UDP].dport == 6081
    raw = bytes(o[UDP].payload)
    assert raw[:4] == bytes([0, 0, 0x65, 0x58]) and raw[4:7] == VNI_A.to_bytes(3, "big")
    inner = Ether(raw[8:])
    assert inner[IP].dst == ENV_IP and inner[ICMP].id == 4242 and inner[ICMP].type == 0


def test_unsolicited_inbound_is_dropped(env):
    pkt = Ether(src=GW_A, dst=env.vpc_if["vpca"]["mac"]) / IP(src=SERVER, dst=ENI_A) / \
        TCP(sport=80, dport=5555, flags="S")
    got, _, d = env.run("xdp_vpc", bytes(pkt), "vpca")
    assert (got, d.get("drop_no_flow")) == ("DROP", 1), d


def test_not_for_an_eni_goes_to_the_kernel(env):
    pkt = Ether(src=GW_A) / IP(src=SERVER, dst="10.0.9.9") / UDP(dport=53)
    got, out, d = env.run("xdp_vpc", bytes(pkt), "vpca")
    assert (got, d.get("pass_vpc_not_eni"), out) == ("PASS", 1, bytes(pkt))


def test_two_vpcs_with_the_same_cidr_are_isolated(env):
    # A flow of tenant A (VPC 1). The identical reply arriving from VPC B (same addresses,
    # same ports) must not reach tenant A's environment.
    fwd = open_flow(env, env_frame(UDP(sport=35001, dport=7) / Raw(b"a")), VNI_A)
    rep_a = reply_to(fwd, GW_A, env.vpc_if["vpca"]["mac"])
    rep_b = reply_to(fwd, GW_B, env.vpc_if["vpcb"]["mac"])
    got, _, d = env.run("xdp_vpc", bytes(rep_b), "vpcb")
    assert (got, d.get("drop_no_flow")) == ("DROP", 1), d
    got, out, _ = env.run("xdp_vpc", bytes(rep_a), "vpca")
    assert got == "REDIRECT" and Ether(out)[VXLAN].vni == VNI_A
    # tenant B's flow from the same inner address and port goes out through VPC B
    fwd_b = open_flow(env, env_frame(UDP(sport=35001, dport=7) / Raw(b"b")), VNI_B)
    assert fwd_b[Ether].dst == GW_B and fwd_b[IP].src == ENI_B
    got, out, _ = env.run("xdp_vpc", bytes(reply_to(fwd_b, GW_B, env.vpc_if["vpcb"]["mac"])), "vpcb")
    assert got == "REDIRECT" and Ether(out)[VXLAN].vni == VNI_B


def test_arp_for_an_eni_address_is_answered(env):
    mac = env.vpc_if["vpca"]["mac"]
    req = Ether(src=GW_A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=GW_A, psrc="10.0.0.1",
                                                         pdst=ENI_A)
    got, out, d = env.run("xdp_vpc", bytes(req), "vpca")
    assert (got, d.get("tx_arp_vpc")) == ("TX", 1), d
    a = Ether(out)
    assert (a[Ether].dst, a[Ether].src, a[ARP].op, a[ARP].hwsrc, a[ARP].psrc, a[ARP].pdst) == \
        (GW_A, mac, 2, mac, ENI_A, "10.0.0.1")
    other = Ether(src=GW_A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, psrc="10.0.0.1", pdst="10.0.0.77")
    got, _, d = env.run("xdp_vpc", bytes(other), "vpca")
    assert (got, d.get("pass_vpc_arp")) == ("PASS", 1)


def test_reply_larger_than_the_fabric_mtu_is_counted(env):
    fwd = open_flow(env, env_frame(UDP(sport=35002, dport=7) / Raw(b"m")), VNI_A)
    mtu = env.dp.config()["fabric_mtu"]
    big = reply_to(fwd, GW_A, env.vpc_if["vpca"]["mac"], payload=b"x" * (mtu - 28 - 36 + 1))
    got, _, d = env.run("xdp_vpc", bytes(big), "vpca")
    assert (got, d.get("drop_fabric_mtu")) == ("DROP", 1), d


def test_replies_go_to_the_worker_that_opened_the_flow(env):
    w2, w2_mac = "100.64.0.12", "02:00:00:00:00:12"
    env.dp.add_worker(w2, w2_mac)
    env.dp.sync_placements({**env.dp.placements(), (w2, VNI_A): 1})
    outs = {}
    for worker, mac, sport in ((WORKER, WORKER_MAC, 36001), (w2, w2_mac, 36001)):
        p = tunnel(env_frame(UDP(sport=sport, dport=7) / Raw(b"w")), worker=worker)
        p[Ether].src = mac
        got, out, _ = env.run("xdp_fabric", bytes(p))
        assert got == "REDIRECT"
        outs[worker] = Ether(out)
    # same environment address and port on both workers: two flows, two ports
    assert outs[WORKER][UDP].sport != outs[w2][UDP].sport
    for worker, mac in ((WORKER, WORKER_MAC), (w2, w2_mac)):
        got, back, _ = env.run("xdp_vpc", bytes(reply_to(outs[worker], GW_A,
                                                         env.vpc_if["vpca"]["mac"])), "vpca")
        o = Ether(back)
        assert (got, o[IP].dst, o[Ether].dst) == ("REDIRECT", worker, mac)


def test_an_interface_whose_slot_another_owns_is_found_in_vpc_ifs(env):
    """vpc_if_slots spares the return path a hash lookup; an interface that lost its slot to
    another (same ifindex modulo the slot count) must still be found, and takes the slot back
    when the other goes."""
    vpca = env.vpc_if["vpca"]["ifindex"]
    slots = env.dp.map("vpc_if_slots")
    n = slots.max_entries
    assert slots.lookup(vpca % n) == {"ifindex": vpca, "vpc_idx": 1}
    fwd = open_flow(env, env_frame(UDP(sport=34077, dport=7) / Raw(b"s")), VNI_A)
    rep = bytes(reply_to(fwd, GW_A, env.vpc_if["vpca"]["mac"]))
    stranger = vpca + n  # an interface of VPC 2 that happens to share vpca's slot
    env.dp._unmap_if(vpca)
    env.dp._map_if(stranger, 2)
    env.dp._map_if(vpca, 1)
    try:
        assert slots.lookup(vpca % n)["ifindex"] == stranger
        got, out, d = env.run("xdp_vpc", rep, "vpca")
        assert (got, d.get("rev_established")) == ("REDIRECT", 1), d
    finally:
        env.dp._unmap_if(stranger)
    assert slots.lookup(vpca % n) == {"ifindex": vpca, "vpc_idx": 1}
    got, _, d = env.run("xdp_vpc", rep, "vpca")
    assert (got, d.get("rev_established")) == ("REDIRECT", 1), d


def test_worker_slots_follow_owners_and_learned_macs(env):
    """worker_slots spares every tunnel packet and every reply a hash lookup. A worker that maps
    to a slot another worker owns is found in `workers`; the slot passes on when its owner goes;
    a MAC learned (first frame, or after a relearn) reaches the slot, so replies follow it."""
    import ipaddress

    slots = env.dp.map("worker_slots")
    n = slots.max_entries
    other = str(ipaddress.IPv4Address(int(ipaddress.IPv4Address(WORKER)) + n))  # same slot
    slot = int(ipaddress.IPv4Address(WORKER)) % n
    assert slots.lookup(slot)["addr"] == WORKER
    env.dp.del_workers([WORKER])
    env.dp.add_worker(other)
    env.dp.add_worker(WORKER)  # its slot is taken now: found in `workers` instead
    assert slots.lookup(slot)["addr"] == other
    new_mac = "02:00:00:00:77:11"
    p = tunnel(env_frame(UDP(sport=36100, dport=7) / Raw(b"w")))
    p[Ether].src = new_mac
    got, out, d = env.run("xdp_fabric", bytes(p))
    assert (got, d.get("worker_mac_learned")) == ("REDIRECT", 1), d
    rep = bytes(reply_to(Ether(out), GW_A, env.vpc_if["vpca"]["mac"]))
    got, back, d = env.run("xdp_vpc", rep, "vpca")
    assert (got, Ether(back)[Ether].dst) == ("REDIRECT", new_mac), d
    env.dp.del_workers([other])  # WORKER takes the slot over, with the MAC it has now
    s = slots.lookup(slot)
    assert (s["addr"], s["w"]["mac"]) == (WORKER, new_mac)
    # a MAC learned while owning the slot (after a relearn) reaches it
    env.dp.relearn_worker(WORKER)
    p[Ether].src = WORKER_MAC
    p[VXLAN].payload[UDP].sport = 36101
    got, out, _ = env.run("xdp_fabric", bytes(p))
    assert got == "REDIRECT" and slots.lookup(slot)["w"]["mac"] == WORKER_MAC
    rep = bytes(reply_to(Ether(out), GW_A, env.vpc_if["vpca"]["mac"]))
    got, back, d = env.run("xdp_vpc", rep, "vpca")
    assert (got, Ether(back)[Ether].dst) == ("REDIRECT", WORKER_MAC), d


def test_last_seen_follows_the_coarse_clock_both_ways(env):
    """last_seen_ns is CLOCK_MONOTONIC_COARSE as of the flow's last packet, either way. The
    datapath reads the clock once per jiffy per CPU (types.h, clock_cache), so it may lag by up
    to two ticks; a packet 60 ms later must move it on by about as much."""
    import time

    def now() -> int:  # CLOCK_MONOTONIC_COARSE: 6 in linux/time.h, unnamed in Python's time
        return time.clock_gettime_ns(6)

    def last_seen() -> int:
        f = env.dp.find_flow(WORKER, VNI_A, ENV_IP, 34077, SERVER, 7, 17)
        assert f is not None
        return f["last_seen_ns"]

    tick = 10_000_000  # the longest tick a kernel has (HZ=100)
    before = now()
    fwd = open_flow(env, env_frame(UDP(sport=34077, dport=7) / Raw(b"t")), VNI_A)
    opened = last_seen()
    assert before - 2 * tick <= opened <= now()
    # Bounds from the clock read just before each packet, not from the sleep: a loaded machine
    # may run the packet long after the sleep, and only the lag of the per-CPU cache is ours.
    time.sleep(0.06)
    sent = now()
    open_flow(env, env_frame(UDP(sport=34077, dport=7) / Raw(b"t")), VNI_A)
    forward = last_seen()
    assert opened < forward and sent - 2 * tick <= forward <= now()
    time.sleep(0.06)
    sent = now()
    got, _, d = env.run("xdp_vpc", bytes(reply_to(fwd, GW_A, env.vpc_if["vpca"]["mac"])), "vpca")
    assert got == "REDIRECT", d
    assert forward < last_seen() and sent - 2 * tick <= last_seen() <= now()
