"""What each IPv4 path of issue 14 costs per packet, beside the established path it branches off,
in one run on one node.

Contract: every figure is the kernel-reported duration of single-packet BPF_PROG_TEST_RUN runs
(cost.py explains repeat=1), the median of a batch, the median over rounds; each path's packet is
checked first to take the path it is named after (its counter moves). Paths: established forward
and return (the baselines), a first fragment forward (the established path plus the note for its
later fragments), a later fragment each way, the node's time exceeded each way, its fragmentation
needed each way (the VPC link narrowed to 1,400 bytes, the fabric to 1,500), an ICMP error
translated each way. The generated ICMP runs at an unlimited rate (icmp_rate 2^32-1), so the
figures are the answer's cost, not the rate limiter's drops.
"""

from __future__ import annotations

import statistics
from typing import Callable

from scapy.layers.inet import ICMP, IP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from . import topo as T


def _tunnel(t: T.Topo, inner: IP) -> bytes:
    return bytes(Ether(src=t.mac[("gen", "g0")], dst=t.mac[("node", "fab0")]) /
                 IP(src=T.GEN_IP, dst=T.FABRIC_IP) / UDP(sport=49152, dport=4789, chksum=0) /
                 VXLAN(vni=T.VNI, flags=0x08) / Ether(src=T.ENV_MAC, dst=T.GATEWAY_MAC) / inner)


def _from_vpc(t: T.Topo, ip: IP) -> bytes:
    return bytes(Ether(src=t.mac[("sink", "s0")], dst=t.mac[("node", "vpca")]) / ip)


def run(rounds: int = 5, batch: int = 3000, progress=print) -> dict:
    from eniplane.datapath import Datapath

    from .lifecycle import ROOT, Side

    side = Side("new", ROOT, 60, 262144)
    t = side.t
    try:
        with Datapath(t.node_name, t.ns["node"]) as dp:
            dp.set_ipv4(icmp_rate=0xFFFFFFFF)
            env = IP(src=T.ENV_IP, dst=T.SERVER)
            hot = side.hot  # a UDP flow, port 40000 -> 7
            side.fwd([hot])
            (key,) = [k for k in side.flow_keys()]
            nat = key["eni_port"]
            back = IP(src=T.SERVER, dst=T.ENI_IP)
            reply = _from_vpc(t, back / UDP(sport=7, dport=nat) / Raw(b"y" * 18))
            big = bytes(range(250)) * 12
            ffr = [_tunnel(t, f) for f in fragment(env / UDP(sport=40000, dport=7) /
                                                   Raw(big), fragsize=1200)]
            rfr = [_from_vpc(t, f) for f in fragment(back / UDP(sport=7, dport=nat) /
                                                     Raw(big), fragsize=1200)]
            quote = bytes(IP(src=T.ENI_IP, dst=T.SERVER) / UDP(sport=nat, dport=7) /
                          Raw(b"x" * 18))
            unreach_in = _from_vpc(t, IP(src=T.SERVER, dst=T.ENI_IP) /
                                   ICMP(type=3, code=3) / Raw(quote))
            unreach_out = _tunnel(t, IP(src=T.ENV_IP, dst=T.SERVER) / ICMP(type=3, code=3) /
                                  Raw(bytes(IP(src=T.SERVER, dst=T.ENV_IP) /
                                            UDP(sport=7, dport=40000) / Raw(b"y" * 18))))
            vpcs = dp.map("vpcs")
            vpc = vpcs.lookup(1)
            fabric_mtu = dp.config()["fabric_mtu"]

            def narrow() -> None:
                vpcs.update(1, {**vpc, "mtu": 1400})
                dp._set_config_fields({"fabric_mtu": 1500})

            def wide() -> None:
                vpcs.update(1, vpc)
                dp._set_config_fields({"fabric_mtu": fabric_mtu})

            ret = lambda pkts: side.ret(pkts)  # noqa: E731
            paths: dict[str, tuple[Callable, list[bytes], str, Callable | None]] = {
                "est_fwd": (side.fwd, [hot], "fwd_established", None),
                "est_return": (ret, [reply], "rev_established", None),
                "first_fragment_fwd": (side.fwd, [ffr[0]], "fwd_established", None),
                "later_fragment_fwd": (side.fwd, [ffr[1]], "fwd_fragment",
                                       lambda: side.fwd([ffr[0]])),
                "later_fragment_return": (ret, [rfr[1]], "rev_fragment",
                                          lambda: side.ret([rfr[0]])),
                "time_exceeded_fwd": (side.fwd, [_tunnel(t, IP(src=T.ENV_IP, dst=T.SERVER,
                                                                ttl=1) /
                                                         UDP(sport=40000, dport=7) /
                                                         Raw(b"x" * 18))],
                                      "tx_icmp_time_exceeded", None),
                "time_exceeded_return": (ret, [_from_vpc(t, IP(src=T.SERVER, dst=T.ENI_IP,
                                                               ttl=1) /
                                                         UDP(sport=7, dport=nat) /
                                                         Raw(b"y" * 18))],
                                         "tx_icmp_time_exceeded", None),
                "frag_needed_fwd": (side.fwd, [_tunnel(t, IP(src=T.ENV_IP, dst=T.SERVER,
                                                             flags="DF") /
                                                      UDP(sport=40000, dport=7) /
                                                      Raw(b"x" * 1450))],
                                    "tx_icmp_frag_needed", narrow),
                "frag_needed_return": (ret, [_from_vpc(t, IP(src=T.SERVER, dst=T.ENI_IP,
                                                             flags="DF") /
                                                       UDP(sport=7, dport=nat) /
                                                       Raw(b"y" * 1460))],
                                       "tx_icmp_frag_needed", narrow),
                "icmp_error_return": (ret, [unreach_in], "rev_icmp_error", None),
                "icmp_error_fwd": (side.fwd, [unreach_out], "fwd_icmp_error", None),
            }
            res: dict = {name: [] for name in paths}
            for name, (fn, pkts, counter, prep) in paths.items():  # each takes its path
                wide()
                if prep:
                    prep()
                before = dp.stats()[counter]
                fn(pkts)
                if dp.stats()[counter] != before + 1:
                    raise RuntimeError(f"bench ipv4: {name}'s packet did not count {counter}")
            for r in range(rounds):
                for name, (fn, pkts, _, prep) in paths.items():
                    wide()
                    if prep:
                        prep()
                    res[name].append(statistics.median(fn(pkts * batch)))
            wide()
            out = {name: statistics.median(v) for name, v in res.items()}
            for name, ns in out.items():
                base = out["est_return"] if "return" in name else out["est_fwd"]
                progress(f"{name}: {ns:.0f} ns ({ns / base:.2f}x the established path)")
            return {"ns": out, "rounds": rounds, "batch": batch}
    finally:
        side.close()
