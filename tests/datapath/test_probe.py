"""One flow entry, found from both sides: the forward path walks the ENI's port range from where
port_hash says the flow's probe starts; user space computes the same function. These tests hold
the two to each other, and check that a walk never stops in front of a flow it should find."""

from __future__ import annotations

import random

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from conftest import (ENI_TINY, ENV_IP, GW_A, SERVER, VNI_B, VNI_TINY, WORKER, env_frame,
                      tunnel)
from eniplane.probe import port_hash, probe_start

DEST = "10.0.0.20"  # VNI_TINY flows of this file go here: test_fabric fills SERVER's ports


def pkt(sport: int, vni: int = VNI_B, dst: str = SERVER, mac: str | None = None) -> bytes:
    f = env_frame(UDP(sport=sport, dport=7) / Raw(b"g"), dst=dst)
    if mac:
        f[Ether].src = mac
    return bytes(tunnel(f, vni=vni))


def start_of(env, sport: int, vni: int, dst: str, lo: int, hi: int) -> int:
    secret = env.dp.config()["port_secret"]
    return lo + probe_start(port_hash(secret, WORKER, vni, ENV_IP, sport, dst, 7, 17), hi - lo + 1)


def test_ports_are_where_user_space_computes_them(env):
    """Forty flows through a full range: each sits where a linear probe from its hashed start,
    in the order the flows opened, puts it; find_flow finds each one the same way."""
    env.dp.flush_flows(vnis={VNI_B})
    taken: set[int] = set()
    sports = random.Random(7).sample(range(20000, 60000), 40)
    for sport in sports:
        got, out, d = env.run("xdp_fabric", pkt(sport))
        assert (got, d.get("fwd_new_flow")) == ("REDIRECT", 1), d
        want = start_of(env, sport, VNI_B, SERVER, 1024, 65535)
        while want in taken:
            want = 1024 + (want - 1024 + 1) % (65535 - 1024 + 1)
        taken.add(want)
        assert Ether(out)[UDP].sport == want
        f = env.dp.find_flow(WORKER, VNI_B, ENV_IP, sport, SERVER, 7, 17)
        assert f is not None and f["nat_port"] == want


def _colliding(env, lo: int, hi: int) -> tuple[int, int]:
    """Two environment ports whose probes start at the same port of VNI_TINY's range."""
    by_start: dict[int, int] = {}
    for sport in range(43000, 43100):
        s = start_of(env, sport, VNI_TINY, DEST, lo, hi)
        if s in by_start:
            return by_start[s], sport
        by_start[s] = sport
    raise AssertionError("no two probes start at the same port")


def test_a_flow_behind_a_hole_is_found_and_never_duplicated(env):
    env.dp.flush_flows()  # every flow: the guard's figures below are the whole table's
    assert env.dp.map("flow_guard").lookup(0)["holes"] == 0
    first, second = _colliding(env, 2000, 2001)
    assert env.run("xdp_fabric", pkt(first, VNI_TINY, DEST))[0] == "REDIRECT"
    got, out, d = env.run("xdp_fabric", pkt(second, VNI_TINY, DEST))
    assert (got, d.get("fwd_new_flow")) == ("REDIRECT", 1), d
    port2 = Ether(out)[UDP].sport
    got, _, d = env.run("xdp_fabric", pkt(second, VNI_TINY, DEST))
    assert (d.get("fwd_established"), d.get("flow_probed")) == (1, 1), d  # one slot further

    # The first flow goes (as a flush of its worker would take it): the second now sits
    # behind an empty slot, and user space says so.
    f1 = env.dp.find_flow(WORKER, VNI_TINY, ENV_IP, first, DEST, 7, 17)
    assert env.dp.map("flows").delete({"vpc_idx": 1, "proto": 17, "eni_addr": ENI_TINY,
                                       "remote": DEST, "eni_port": f1["nat_port"],
                                       "remote_port": 7})
    env.dp.hot_invalidate()  # as a flush does: the flow's flow_hot slot stops too
    evicted = env.dp.map("flow_guard").lookup(0)["evicted"]
    assert env.dp.guard_resync(deleted=1) == {"count": 1, "holes": 1, "depths": 0b10,
                                              "evicted": evicted, "swept": 0}
    got, out, d = env.run("xdp_fabric", pkt(second, VNI_TINY, DEST))
    assert (got, d.get("fwd_established")) == ("REDIRECT", 1), d
    assert Ether(out)[UDP].sport == port2  # the same translation, not a second entry
    assert len(env.dp.flows(vni=VNI_TINY)) == 1
    # a new flow fills the hole; with no hole left, walks may stop at empty slots again
    got, _, d = env.run("xdp_fabric", pkt(first, VNI_TINY, DEST))
    assert (got, d.get("fwd_new_flow")) == ("REDIRECT", 1), d
    assert env.dp.guard_resync() == {"count": 2, "holes": 0, "depths": 0b11, "evicted": evicted, "swept": 0}


def test_with_holes_a_walk_goes_only_as_deep_as_flows_sit(env):
    """`depths` bounds the walk: told (falsely) that no flow sits past its first port, the walk
    stops there and opens a second entry; told the truth, it finds the flow."""
    env.dp.flush_flows(vnis={VNI_TINY})
    first, second = _colliding(env, 2000, 2001)
    env.run("xdp_fabric", pkt(first, VNI_TINY, DEST))
    env.run("xdp_fabric", pkt(second, VNI_TINY, DEST))
    g = env.dp.map("flow_guard")
    assert g.lookup(0)["depths"] & 0b11 == 0b11  # the datapath recorded both depths
    f1 = env.dp.find_flow(WORKER, VNI_TINY, ENV_IP, first, DEST, 7, 17)
    env.dp.map("flows").delete({"vpc_idx": 1, "proto": 17, "eni_addr": ENI_TINY, "remote": DEST,
                                "eni_port": f1["nat_port"], "remote_port": 7})
    env.dp.hot_invalidate()  # as a flush does: the flow's flow_hot slot stops too
    g.update(0, {"count": 1, "holes": 1, "depths": 0b01})
    _, _, d = env.run("xdp_fabric", pkt(second, VNI_TINY, DEST))
    assert d.get("fwd_new_flow") == 1, d
    env.dp.flush_flows(vnis={VNI_TINY})


def test_a_partial_flush_finds_the_flows_it_left_behind_a_hole(env):
    """flush_flows checks only the destinations it emptied ports of: a flow of another worker
    that probed past the flushed one is found, holes are flagged, the flow keeps its port."""
    w2 = "100.64.0.12"
    env.dp.add_worker(w2)
    env.dp.sync_placements({**env.dp.placements(), (w2, VNI_TINY): 1})
    env.dp.flush_flows()
    secret = env.dp.config()["port_secret"]

    def start(worker: str, sport: int) -> int:
        h = port_hash(secret, worker, VNI_TINY, ENV_IP, sport, DEST, 7, 17)
        return 2000 + probe_start(h, 2)

    s1 = 43200
    s2 = next(p for p in range(43300, 43400) if start(w2, p) == start(WORKER, s1))
    assert env.run("xdp_fabric", pkt(s1, VNI_TINY, DEST))[0] == "REDIRECT"
    p2 = tunnel(env_frame(UDP(sport=s2, dport=7) / Raw(b"g"), dst=DEST), vni=VNI_TINY, worker=w2)
    got, out, d = env.run("xdp_fabric", bytes(p2))
    assert (got, d.get("fwd_new_flow")) == ("REDIRECT", 1), d
    port2 = Ether(out)[UDP].sport
    assert port2 != start(w2, s2)  # it sits one port further along its probe
    assert env.dp.flush_flows(workers={WORKER}) == 1
    assert env.dp.map("flow_guard").lookup(0)["holes"] == 1
    got, out, d = env.run("xdp_fabric", bytes(p2))
    assert (got, d.get("fwd_established"), Ether(out)[UDP].sport) == ("REDIRECT", 1, port2), d
    env.dp.flush_flows()
    g = env.dp.map("flow_guard").lookup(0)
    assert (g["count"], g["holes"], g["depths"]) == (0, 0, 0)


def test_without_holes_a_walk_stops_at_the_first_empty_slot(env):
    """The same situation, but user space not told: the walk stops in front of the flow. This
    is what flow_guard exists for, and shows the test above can fail."""
    env.dp.flush_flows(vnis={VNI_TINY})
    first, second = _colliding(env, 2000, 2001)
    env.run("xdp_fabric", pkt(first, VNI_TINY, DEST))
    env.run("xdp_fabric", pkt(second, VNI_TINY, DEST))
    f1 = env.dp.find_flow(WORKER, VNI_TINY, ENV_IP, first, DEST, 7, 17)
    env.dp.map("flows").delete({"vpc_idx": 1, "proto": 17, "eni_addr": ENI_TINY, "remote": DEST,
                                "eni_port": f1["nat_port"], "remote_port": 7})
    env.dp.hot_invalidate()  # as a flush does: the flow's flow_hot slot stops too
    got, _, d = env.run("xdp_fabric", pkt(second, VNI_TINY, DEST))
    assert d.get("fwd_new_flow") == 1, d
    assert len(env.dp.flows(vni=VNI_TINY)) == 2  # a duplicate: the hazard guarded against
    env.dp.flush_flows(vnis={VNI_TINY})


def test_a_nearly_full_table_makes_holes_possible(env):
    env.dp.flush_flows(vnis={VNI_B})
    g = env.dp.map("flow_guard")
    g.update(0, {"count": 1 << 40, "holes": 0})  # as if the LRU could evict now
    got, _, d = env.run("xdp_fabric", pkt(37004))
    assert got == "REDIRECT" and d.get("fwd_new_flow") == 1
    assert g.lookup(0)["holes"] == 1
    after = env.dp.guard_resync()
    assert (after["count"], after["holes"]) == (len(env.dp.flows()), 0)


def test_replies_follow_a_new_environment_mac(env):
    """Replies go to the MAC of the flow's latest forward packet (found by make fuzz when the
    two directions lived in two entries; kept as a regression case)."""
    env.run("xdp_fabric", pkt(37010))
    got, out, _ = env.run("xdp_fabric", pkt(37010, mac="02:ee:00:00:99:99"))
    assert got == "REDIRECT"
    o = Ether(out)
    rep = Ether(src=GW_A, dst=env.vpc_if["vpcb"]["mac"]) / IP(src=SERVER, dst=o[IP].src) / \
        UDP(sport=7, dport=o[UDP].sport) / Raw(b"r")
    got, back, d = env.run("xdp_vpc", bytes(rep), "vpcb")
    assert got == "REDIRECT", d
    assert Ether(back)[VXLAN].payload[Ether].dst == "02:ee:00:00:99:99"


def test_a_resync_keeps_what_the_datapath_added_meanwhile(env):
    """User space writes the guard after reading the whole table; inserts, depth bits and a
    holes flag the datapath set in between must survive that write."""
    env.dp.flush_flows()
    g = env.dp.map("flow_guard")
    start = g.lookup(0)
    assert (start["count"], start["holes"], start["depths"]) == (0, 0, 0)
    g.update(0, {**start, "count": 3, "holes": 1, "depths": 0b100})  # the datapath, meanwhile
    after = env.dp.guard_resync(flows=[], touched=set(), start=start)
    assert after == {**start, "count": 3, "holes": 1, "depths": 0b100}
    env.dp.flush_flows()
