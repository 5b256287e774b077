"""Under map pressure (64-entry LRU tables, 300 flows) the two halves of a flow may be evicted
independently; no packet may ever be delivered to another flow or another environment."""

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
    # every flow again: whatever was evicted, the translation used must own its port now
    for sport in range(20000, 20000 + N):
        got, out, d = env.run("xdp_fabric", pkt(sport))
        assert got == "REDIRECT", d
        nat_port = Ether(out)[UDP].sport
        r = env.dp.map("flows_rev").lookup({"vpc_idx": 1, "eni_addr": Ether(out)[IP].src,
                                            "remote": SERVER, "eni_port": nat_port,
                                            "remote_port": 7, "proto": 17})
        assert r is not None and r["env_port"] == sport and r["env_addr"] == ENV_IP
        # and a reply to that port goes back to exactly this environment port
        rep = Ether(src=GW_A, dst=env.vpc_if["vpca"]["mac"]) / IP(src=SERVER, dst=Ether(out)[IP].src) / \
            UDP(sport=7, dport=nat_port) / Raw(b"r")
        got, back, d = env.run("xdp_vpc", bytes(rep), "vpca")
        assert got == "REDIRECT", d
        assert Ether(back)[VXLAN].payload[UDP].dport == sport
    s = env.dp.stats()
    assert s["flow_repaired"] + s["flow_stale"] + s["fwd_new_flow"] > N  # pressure did happen
