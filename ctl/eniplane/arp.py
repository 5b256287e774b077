"""Resolve a VPC gateway's MAC by ARP on the node's VPC-side interface.

Contract: sends ARP requests (bounded: `tries` of them, `timeout` seconds in all) from inside the
node's namespace on one interface, and returns once xdp_vpc has learned the gateway's MAC from the
reply (it learns from any ARP the gateway sends). The kernel's neighbour table is not used: VPCs
overlap, so it could not tell two gateways at 10.0.0.1 apart.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from typing import TYPE_CHECKING

from .errors import EniplaneError
from .netlink import in_netns

if TYPE_CHECKING:
    from .datapath import Datapath

ETH_P_ARP = 0x0806


def arp_request(src_mac: str, src_ip: str, target_ip: str) -> bytes:
    smac = bytes.fromhex(src_mac.replace(":", ""))
    eth = b"\xff" * 6 + smac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + smac + ipaddress.IPv4Address(src_ip).packed
    arp += b"\0" * 6 + ipaddress.IPv4Address(target_ip).packed
    return (eth + arp).ljust(60, b"\0")


def resolve_gateway(dp: "Datapath", netns: str | None, ifname: str, vpc_idx: int, if_mac: str,
                    gateway_ip: str, src_ip: str = "0.0.0.0", timeout: float = 3.0,
                    tries: int = 6) -> str:
    """Ask the gateway until the datapath knows its MAC; after `vpc relearn`, until the datapath
    has adopted the MAC of an answer (the relearn flag is gone)."""
    frame = arp_request(if_mac, src_ip, gateway_ip)
    deadline = time.monotonic() + timeout
    with in_netns(netns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind((ifname, 0))
        for _ in range(tries):
            s.send(frame)
            step = time.monotonic() + timeout / tries
            while time.monotonic() < min(step, deadline):
                gw = dp.gateway(vpc_idx)  # type: ignore[attr-defined]
                if gw and gw["mac"] and not gw["relearn"] and gw["ip"] == gateway_ip:
                    return gw["mac"]
                time.sleep(0.01)
    finally:
        s.close()
    raise EniplaneError(f"gateway {gateway_ip} did not answer ARP on {ifname} within {timeout:g}s")
