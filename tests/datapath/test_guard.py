"""rev_guard: the established path skips reading a flow's reverse half only while no reverse
entry can have been evicted; a nearly full table, or reverse entries deleted from user space,
make every flow check (and repair) its reverse half again."""

from __future__ import annotations

from scapy.layers.inet import UDP
from scapy.packet import Raw

from conftest import SERVER, VNI_B, env_frame, tunnel


def pkt(sport: int) -> bytes:
    return bytes(tunnel(env_frame(UDP(sport=sport, dport=7) / Raw(b"g")), vni=VNI_B))


def rev_key_of(env, sport: int) -> dict:
    f = next(f for f in env.dp.flows(vni=VNI_B) if f["key"]["sport"] == sport)
    return {"vpc_idx": f["fwd"]["vpc_idx"], "eni_addr": f["fwd"]["eni_addr"], "remote": SERVER,
            "eni_port": f["fwd"]["nat_port"], "remote_port": 7, "proto": 17}


def test_established_flows_skip_the_reverse_read_while_safe(env):
    env.dp.guard_resync()
    got, _, d = env.run("xdp_fabric", pkt(37001))
    assert got == "REDIRECT" and d.get("fwd_new_flow") == 1
    for _ in range(3):
        got, _, d = env.run("xdp_fabric", pkt(37001))
        assert got == "REDIRECT" and d.get("fwd_established") == 1
        assert "flow_rev_checked" not in d, d


def test_user_space_deletion_makes_flows_check_and_repair(env):
    env.run("xdp_fabric", pkt(37002))
    rk = rev_key_of(env, 37002)
    assert env.dp.map("flows_rev").delete(rk)
    env.dp.guard_resync()  # what every user-space deletion of reverse entries is followed by
    got, _, d = env.run("xdp_fabric", pkt(37002))
    assert got == "REDIRECT"
    assert d.get("flow_rev_checked") == 1 and d.get("flow_repaired") == 1, d
    assert env.dp.map("flows_rev").lookup(rk)["env_port"] == 37002
    got, _, d = env.run("xdp_fabric", pkt(37002))
    assert "flow_rev_checked" not in d, d  # checked once per epoch


def test_a_nearly_full_table_makes_every_flow_check(env):
    env.dp.guard_resync()
    env.run("xdp_fabric", pkt(37003))
    g = env.dp.map("rev_guard")
    epoch = g.lookup(0)["epoch"]
    g.update(0, {"rev_count": 1 << 40, "epoch": epoch, "danger": 0})  # as if nearly full
    got, _, d = env.run("xdp_fabric", pkt(37004))  # a claim: now evictions are possible
    assert got == "REDIRECT" and d.get("fwd_new_flow") == 1
    st = g.lookup(0)
    assert st["danger"] == 1 and st["epoch"] == epoch + 1
    for sport in (37003, 37004, 37003):
        got, _, d = env.run("xdp_fabric", pkt(sport))
        assert d.get("flow_rev_checked") == 1, d  # every packet, while in danger
    after = env.dp.guard_resync()
    assert after["danger"] == 0 and after["rev_count"] == len(list(env.dp.map("flows_rev").keys_raw()))
    _, _, d = env.run("xdp_fabric", pkt(37003))
    assert d.get("flow_rev_checked") == 1  # once more in the new epoch ...
    _, _, d = env.run("xdp_fabric", pkt(37003))
    assert "flow_rev_checked" not in d  # ... then trusted again


def test_a_new_environment_mac_reaches_the_reverse_half(env):
    """Replies are addressed to the MAC of the flow's latest forward packet, also when the
    reverse-half read is otherwise skipped (found by make fuzz, kept as a regression case)."""
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    env.dp.guard_resync()
    p1 = tunnel(env_frame(UDP(sport=37010, dport=7) / Raw(b"m")), vni=VNI_B)
    env.run("xdp_fabric", bytes(p1))
    p2 = p1.copy()
    p2[VXLAN].payload[Ether].src = "02:ee:00:00:99:99"
    got, _, d = env.run("xdp_fabric", bytes(p2))
    assert got == "REDIRECT" and d.get("flow_rev_checked") == 1, d
    assert env.dp.map("flows_rev").lookup(rev_key_of(env, 37010))["env_mac"] == "02:ee:00:00:99:99"
    _, _, d = env.run("xdp_fabric", bytes(p2))
    assert "flow_rev_checked" not in d, d
