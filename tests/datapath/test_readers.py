"""What other modules read from the datapath, through Datapath's own methods (map layouts and flag
bits stay in datapath.py; tests/unit/test_layering.py checks nobody else reads them)."""

from __future__ import annotations

from conftest import GW_B, VNI_A, VNI_B, VNI_TINY, WORKER, WORKER_MAC, env_frame, tunnel
from scapy.layers.inet import UDP
from scapy.packet import Raw


def test_gateway_mac_is_known_only_once_set_and_for_its_gateway(env):
    assert env.dp.gateway_mac(2) == GW_B
    assert env.dp.gateway_mac(2, "10.0.0.1") == GW_B
    assert env.dp.gateway_mac(2, "10.0.0.2") is None
    assert env.dp.gateway_mac(77) is None  # never attached: an all-zero array slot
    b = env.vpc_if["vpcb"]
    try:
        # another gateway address on the same interface: the old gateway's MAC is not its MAC
        env.dp.set_vpc(b["ifindex"], 2, "10.0.0.254", b["mac"], 2)
        assert env.dp.gateway_mac(2) is None
    finally:
        env.dp.set_vpc(b["ifindex"], 2, "10.0.0.1", b["mac"], 2, gateway_mac=GW_B)
    assert env.dp.gateway_mac(2) == GW_B


def test_workers_and_the_macs_learned_for_them(env):
    env.run("xdp_fabric", bytes(tunnel(env_frame(UDP(sport=5000, dport=7) / Raw(b"x")))))
    other = "100.64.0.99"
    env.dp.add_worker(other)
    try:
        assert {WORKER, other} <= set(env.dp.workers())
        macs = env.dp.worker_macs()
        assert macs[WORKER] == WORKER_MAC
        assert other not in macs  # registered, never sent: no MAC yet
    finally:
        env.dp.del_workers([other])
    assert other not in env.dp.workers()


def test_eni_counters_and_enis(env):
    names = env.dp.eni_counter_names()
    assert "flows_created" in names and "sg_denied" in names
    assert list(env.dp.eni_stats(VNI_A)[VNI_A]) == names
    enis = env.dp.enis()
    assert {VNI_A, VNI_B, VNI_TINY} <= set(enis)
    assert enis[VNI_TINY]["port_lo"] == 2000
