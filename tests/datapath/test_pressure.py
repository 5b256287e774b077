"""Under map pressure (a 64-entry LRU table, 300 flows) flows are evicted, whole; no packet may
ever be delivered to another flow or another environment, and no flow may have two entries."""

from __future__ import annotations

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from conftest import ENV_IP, GW_A, SERVER, VNI_A, env_frame, tunnel

N = 300


def pkt(sport: int) -> bytes:
    return bytes(tunnel(env_frame(UDP(sport=sport, dport=7) / Raw(b"p")), vni=VNI_A))


def test_eviction_never_misdelivers(small_env):
    env = small_env
    for sport in range(20000, 20000 + N):
        got, _, d = env.run("xdp_fabric", pkt(sport))
        assert got == "REDIRECT", d
    assert env.dp.map("flow_guard").lookup(0)["holes"] == 1  # a 64-entry table is always near full
    # every flow again: whatever was evicted, the translation used must own its port now
    for sport in range(20000, 20000 + N):
        got, out, d = env.run("xdp_fabric", pkt(sport))
        assert got == "REDIRECT", d
        nat_port = Ether(out)[UDP].sport
        f = env.dp.map("flows").lookup({"vpc_idx": 1, "proto": 17, "eni_addr": Ether(out)[IP].src,
                                        "remote": SERVER, "eni_port": nat_port,
                                        "remote_port": 7})
        assert f is not None and f["env_port"] == sport and f["env_addr"] == ENV_IP
        # and a reply to that port goes back to exactly this environment port
        rep = Ether(src=GW_A, dst=env.vpc_if["vpca"]["mac"]) / IP(src=SERVER, dst=Ether(out)[IP].src) / \
            UDP(sport=7, dport=nat_port) / Raw(b"r")
        got, back, d = env.run("xdp_vpc", bytes(rep), "vpca")
        assert got == "REDIRECT", d
        assert Ether(back)[VXLAN].payload[UDP].dport == sport
    owners = [(f["worker"], f["vni"], f["env_addr"], f["env_port"], f["remote"],
               f["remote_port"], f["proto"]) for f in env.dp.flows()]
    assert len(owners) == len(set(owners)) <= 64  # evicted whole, never duplicated
    assert env.dp.stats()["fwd_new_flow"] > N  # pressure did happen
    # evictions are visible: inserts the guard counted, less what the table holds
    entries = env.dp.map("flows").count()
    guard = env.dp.map("flow_guard").lookup(0)
    evicted = env.dp.flows_evicted()
    assert evicted == guard["evicted"] + guard["count"] - entries > 0
    n = env.dp.flush_flows()  # a recount keeps what was evicted so far, and the count is true
    guard = env.dp.map("flow_guard").lookup(0)
    assert (guard["count"], n) == (0, entries) and env.dp.flows_evicted() == evicted


def test_a_small_table_still_stops_walks_at_empty_slots(lab):
    """FLOW_SAFE_ENTRIES is derived from the possible CPUs' parked LRU nodes: a 4,096-entry
    table (the review's case, where the old bound was negative) has no holes after a flow."""
    from conftest import node_env
    from eniplane import probe

    with node_env(lab, "4k", {"MAX_FLOWS": 4096}) as env:
        assert probe.flow_safe_entries(4096) > 0
        got, _, d = env.run("xdp_fabric", pkt(21000))
        assert got == "REDIRECT", d
        g = env.dp.map("flow_guard").lookup(0)
        assert (g["count"], g["holes"]) == (1, 0)
