"""Tenant isolation against a hostile worker host or VPC host, row by row: placement of
functions on workers, MACs learned once and kept, IPv4 lengths that lie, VLAN tags on replies,
and the ENI cache's generation read before the ENI.

Each test uses workers of its own (100.64.0.2x), so the session's shared node keeps its state.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from conftest import (ENI_A, FABRIC_IP, GATEWAY_MAC, GW_A, SERVER, VNI_A, VNI_B,
                      env_frame, node_env, tunnel)
from eniplane import paths

HOSTILE_MAC = "02:66:00:00:00:66"


def place(env, worker: str, mac: str | None, *vnis: int) -> None:
    env.dp.add_worker(worker, mac)
    env.dp.sync_placements({**env.dp.placements(), **{(worker, v): 1 for v in vnis}})


def udp(sport: int, worker: str, mac: str, vni: int = VNI_A, dport: int = 7):
    p = tunnel(env_frame(UDP(sport=sport, dport=dport) / Raw(b"i")), vni=vni, worker=worker)
    p[Ether].src = mac
    return p


def reply_for(env, out: bytes, vpc: str = "vpca", gw: str = GW_A) -> bytes:
    o = Ether(out)
    return bytes(Ether(src=gw, dst=env.vpc_if[vpc]["mac"]) /
                 IP(src=o[IP].dst, dst=o[IP].src, ttl=64) /
                 UDP(sport=o[UDP].dport, dport=o[UDP].sport) / Raw(b"pong"))


# ---- placement --------------------------------------------------------------------------------
def test_a_worker_sends_only_on_the_enis_of_functions_placed_on_it(env):
    w, mac = "100.64.0.21", "02:00:00:00:00:21"
    place(env, w, mac, VNI_A)
    got, _, d = env.run("xdp_fabric", bytes(udp(40001, w, mac, VNI_A)))
    assert (got, d.get("fwd_new_flow")) == ("REDIRECT", 1), d
    # another tenant's ENI: no new flow, no gateway ARP
    got, _, d = env.run("xdp_fabric", bytes(udp(40001, w, mac, VNI_B)))
    assert (got, d.get("drop_worker_not_placed")) == ("DROP", 1), d
    arp = tunnel(Ether(src="02:ee:00:00:00:21", dst="ff:ff:ff:ff:ff:ff") /
                 ARP(op=1, hwsrc="02:ee:00:00:00:21", psrc="172.16.0.9", pdst="172.16.0.1"),
                 vni=VNI_B, worker=w)
    arp[Ether].src = mac
    got, _, d = env.run("xdp_fabric", bytes(arp))
    assert (got, d.get("drop_worker_not_placed")) == ("DROP", 1), d
    arp[VXLAN].vni = VNI_A
    got, _, d = env.run("xdp_fabric", bytes(arp))
    assert (got, d.get("tx_arp_tunnel")) == ("TX", 1), d


def test_unplacing_stops_the_workers_established_flows(env):
    w, mac = "100.64.0.22", "02:00:00:00:00:22"
    place(env, w, mac, VNI_A)
    got, out, _ = env.run("xdp_fabric", bytes(udp(40002, w, mac)))
    assert got == "REDIRECT"
    got, _, d = env.run("xdp_fabric", bytes(udp(40002, w, mac)))
    assert d.get("fwd_established") == 1, d
    rep = reply_for(env, out)
    env.dp.sync_placements({k: v for k, v in env.dp.placements().items() if k[0] != w})
    got, _, d = env.run("xdp_fabric", bytes(udp(40002, w, mac)))
    assert (got, d.get("drop_worker_not_placed")) == ("DROP", 1), d
    got, _, d = env.run("xdp_vpc", rep, "vpca")  # and nothing comes back to it either
    assert (got, d.get("drop_no_flow")) == ("DROP", 1), d


# ---- worker MACs ------------------------------------------------------------------------------
def test_a_workers_mac_is_learned_once_and_kept(env):
    w, mac = "100.64.0.23", "02:00:00:00:00:23"
    place(env, w, None, VNI_A)
    got, out, d = env.run("xdp_fabric", bytes(udp(40003, w, mac)))
    assert (got, d.get("worker_mac_learned")) == ("REDIRECT", 1), d
    # a host that claims the worker's address: new flow, established flow and ARP all refused
    for p in (udp(40004, w, HOSTILE_MAC), udp(40003, w, HOSTILE_MAC)):
        got, _, d = env.run("xdp_fabric", bytes(p))
        assert (got, d.get("worker_mac_conflict")) == ("DROP", 1), d
    arp = tunnel(Ether(src="02:ee:00:00:00:23") / ARP(op=1, psrc="172.16.0.9", pdst="172.16.0.1"),
                 worker=w)
    arp[Ether].src = HOSTILE_MAC
    got, _, d = env.run("xdp_fabric", bytes(arp))
    assert (got, d.get("worker_mac_conflict")) == ("DROP", 1), d
    assert env.dp.workers()[w]["mac"] == mac
    got, back, _ = env.run("xdp_vpc", reply_for(env, out), "vpca")
    assert (got, Ether(back)[Ether].dst) == ("REDIRECT", mac)  # replies still go to the worker
    # the operator says the worker's NIC changed: the next MAC is adopted, once
    env.dp.relearn_worker(w)
    got, out, d = env.run("xdp_fabric", bytes(udp(40005, w, "02:00:00:00:01:23")))
    assert (got, d.get("worker_mac_learned")) == ("REDIRECT", 1), d
    got, _, d = env.run("xdp_fabric", bytes(udp(40006, w, mac)))
    assert (got, d.get("worker_mac_conflict")) == ("DROP", 1), d


def test_a_static_worker_mac_is_never_learned_over(env):
    w, mac = "100.64.0.24", "02:00:00:00:00:24"
    place(env, w, mac, VNI_A)
    got, _, d = env.run("xdp_fabric", bytes(udp(40007, w, HOSTILE_MAC)))  # even the first frame
    assert (got, d.get("worker_mac_conflict")) == ("DROP", 1), d
    got, _, d = env.run("xdp_fabric", bytes(udp(40007, w, mac)))
    assert (got, d.get("fwd_new_flow"), d.get("worker_mac_learned")) == ("REDIRECT", 1, None), d
    assert env.dp.workers()[w]["mac_source"] == "static"


# ---- the VPC gateway's MAC --------------------------------------------------------------------
def test_a_vpc_host_claiming_the_gateway_does_not_become_the_next_hop(env):
    b = env.vpc_if["vpcb"]
    env.dp.set_vpc(b["ifindex"], 2, "10.0.0.1", b["mac"], 2)  # learned, not static
    try:
        env.dp.relearn_gateway(2)
        real = Ether(src=GW_B_REAL, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=2, hwsrc=GW_B_REAL, psrc="10.0.0.1", pdst="10.0.0.1")
        got, _, d = env.run("xdp_vpc", bytes(real), "vpcb")
        assert d.get("gw_mac_learned") == 1, d
        claim = Ether(src=HOSTILE_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=1, hwsrc=HOSTILE_MAC, psrc="10.0.0.1", pdst="10.0.0.10")
        got, _, d = env.run("xdp_vpc", bytes(claim), "vpcb")
        assert (got, d.get("gw_mac_conflict"), d.get("gw_mac_learned")) == ("PASS", 1, None), d
        assert env.dp.gateway(2)["mac"] == GW_B_REAL
        got, out, _ = env.run("xdp_fabric", bytes(udp(40008, "100.64.0.11", "02:00:00:00:00:11",
                                                      VNI_B)))
        assert got == "REDIRECT" and Ether(out)[Ether].dst == GW_B_REAL
        env.dp.relearn_gateway(2)  # the operator's word: the next answer is adopted
        env.run("xdp_vpc", bytes(claim), "vpcb")
        assert env.dp.gateway(2) == {"ip": "10.0.0.1", "mac": HOSTILE_MAC,
                                     "mac_source": "learned", "relearn": False}
    finally:
        from conftest import GW_B
        env.dp.set_vpc(b["ifindex"], 2, "10.0.0.1", b["mac"], 2, gateway_mac=GW_B)


GW_B_REAL = "02:0b:0b:0b:0b:02"


# ---- IPv4 lengths -----------------------------------------------------------------------------
@pytest.mark.parametrize("tot_len", [19, 200], ids=["shorter-than-header", "longer-than-frame"])
def test_an_inner_total_length_that_lies_is_dropped(env, tot_len):
    p = bytearray(bytes(udp(40009, "100.64.0.11", "02:00:00:00:00:11")))
    inner_ip = 14 + 20 + 8 + 8 + 14
    p[inner_ip + 2:inner_ip + 4] = tot_len.to_bytes(2, "big")
    got, _, d = env.run("xdp_fabric", bytes(p))
    assert (got, d.get("drop_inner_bad_ip")) == ("DROP", 1), d


def test_a_reply_whose_total_length_lies_is_dropped(env):
    got, out, _ = env.run("xdp_fabric", bytes(udp(40010, "100.64.0.11", "02:00:00:00:00:11")))
    rep = bytearray(reply_for(env, out))
    rep[16:18] = (len(rep) - 14 + 1).to_bytes(2, "big")
    got, _, d = env.run("xdp_vpc", bytes(rep), "vpca")
    assert (got, d.get("drop_vpc_malformed")) == ("DROP", 1), d


# ---- VLAN tags --------------------------------------------------------------------------------
@pytest.mark.parametrize("tags", [[Dot1Q(vlan=101)], [Dot1AD(vlan=7), Dot1Q(vlan=102)]],
                         ids=["802.1Q", "QinQ"])
def test_replies_carry_the_workers_vlan_tags(env, tags):
    w, mac = ("100.64.0.25", "02:00:00:00:00:25") if len(tags) == 1 else \
        ("100.64.0.26", "02:00:00:00:00:26")
    place(env, w, None, VNI_A)
    inner = env_frame(UDP(sport=40011, dport=7) / Raw(b"v"))
    outer = Ether(src=mac, dst="02:00:00:00:00:01")
    for t in tags:
        outer = outer / t
    p = outer / IP(src=w, dst=FABRIC_IP) / UDP(sport=40000, dport=4789) / \
        VXLAN(vni=VNI_A, flags=0x08) / inner
    got, out, d = env.run("xdp_fabric", bytes(p))
    assert got == "REDIRECT", d
    got, back, d = env.run("xdp_vpc", reply_for(env, out), "vpca")
    assert got == "REDIRECT", d
    o = Ether(back)
    want = Ether(src=env.dp.config()["fabric_mac"], dst=mac)
    for t in tags:
        want = want / t.copy()
    want = want / IP(src=FABRIC_IP, dst=w, id=0, flags=0, ttl=64) / \
        UDP(sport=o[UDP].sport, dport=4789, chksum=0) / VXLAN(vni=VNI_A, flags=0x08) / \
        o[VXLAN].payload
    assert back == bytes(want)
    # a tunnel ARP is answered in place: its tags stay as they came
    arp = outer / IP(src=w, dst=FABRIC_IP) / UDP(sport=40000, dport=4789) / \
        VXLAN(vni=VNI_A, flags=0x08) / Ether(src="02:ee:00:00:00:25", dst="ff:ff:ff:ff:ff:ff") / \
        ARP(op=1, hwsrc="02:ee:00:00:00:25", psrc="172.16.0.9", pdst="172.16.0.1")
    got, out, _ = env.run("xdp_fabric", bytes(arp))
    assert got == "TX" and bytes(Ether(out))[12:12 + 4 * len(tags)] == bytes(p)[12:12 + 4 * len(tags)]


# ---- the ENI cache ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hooked_env(lab):
    """A node built with the test hook that changes an ENI between the cache's two reads."""
    with node_env(lab, "hook", {"ENIPLANE_TEST_HOOKS": 1}) as e:
        e.dp.add_worker("100.64.0.11", "02:00:00:00:00:11")
        yield e


def test_an_eni_changed_between_the_caches_reads_is_not_cached_as_current(hooked_env):
    """The control plane changes the ENI (and bumps the generation) exactly between the cache
    fill's read of the generation and its read of the ENI. The next packet must see the new ENI:
    read the other way round, the old ENI would sit in the cache under the new generation."""
    env = hooked_env
    env.dp.flush_flows()
    cfg = env.dp.config()
    env.dp.map("config").update(0, {**cfg, "eni_gen": cfg["eni_gen"] + 1})  # every slot stale
    new_addr = "10.0.1.99"
    hook = _hook_map(env)
    hook.update(0, {"armed": 1, "vni": VNI_A,
                    "eni": {"eni_idx": 1, "vpc_idx": 1, "addr": new_addr, "port_lo": 1024,
                            "port_hi": 65535}})
    w, mac = "100.64.0.11", "02:00:00:00:00:11"
    got, out, d = env.run("xdp_fabric", bytes(udp(40020, w, mac)))
    assert hook.lookup(0)["armed"] == 0, "the hook did not run"
    got, out, d = env.run("xdp_fabric", bytes(udp(40021, w, mac)))
    assert got == "REDIRECT", d
    assert Ether(out)[IP].src == new_addr
    env.dp.set_eni(VNI_A, 1, 1, ENI_A)


def _hook_map(env):
    """The test build's eni_race array (pinned beside the node's maps)."""
    from eniplane.maps import PinnedMap

    return PinnedMap(str(paths.maps_dir(env.dp.node) / "eni_race"))
