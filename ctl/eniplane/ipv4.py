"""The node-wide IPv4 settings: MSS clamping, the ICMP the node generates, and the address it
sends that ICMP from inside the tunnel.

Contract: the settings' names, defaults and checks; datapath.py alone knows how node_cfg holds them
(its flags, tunnel_gateway, icmp_rate). bpf/consts.h's DEFAULT_ICMP_RATE and ICMP_BURST are held
equal here by tests/unit/test_consts.py. `check_settings` raises InvalidInput naming the setting,
for the CLI's options, `apply -f`, the State's operations and the datapath alike.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Mapping

from .errors import InvalidInput

DEFAULT_ICMP_RATE = 1000  # per second per CPU, as the kernel's icmp_msgs_per_sec
ICMP_BURST = 50  # as the kernel's icmp_msgs_burst
U32_MAX = 0xFFFFFFFF
# Environments route on-link (no gateway address of theirs to reuse): a link-local address
# names the node's hop in traceroute without claiming one of any VPC's.
DEFAULT_TUNNEL_GATEWAY = "169.254.0.1"
DEFAULTS: dict[str, Any] = {"mss_clamp": True, "icmp_rate": DEFAULT_ICMP_RATE,
                            "tunnel_gateway": DEFAULT_TUNNEL_GATEWAY}
NAMES = tuple(DEFAULTS)


def check_icmp_rate(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= U32_MAX:
        raise InvalidInput(f"icmp_rate must be a whole number of messages per second per CPU "
                           f"from 0 (none) to {U32_MAX}, not {n!r}")
    return n


def check_tunnel_gateway(a: Any) -> str:
    try:
        addr = ipaddress.IPv4Address(a)
    except (ValueError, TypeError):
        raise InvalidInput(f"tunnel_gateway must be an IPv4 address, not {a!r}") from None
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr == \
            ipaddress.IPv4Address("255.255.255.255"):
        raise InvalidInput(f"tunnel_gateway {a} cannot be the source of an ICMP message "
                           f"(RFC 1812 4.3.2.7): use a unicast address")
    return str(addr)


def check_mss_clamp(v: Any) -> bool:
    if not isinstance(v, bool):
        raise InvalidInput(f"mss_clamp must be true or false, not {v!r}")
    return v


_CHECKS = {"mss_clamp": check_mss_clamp, "icmp_rate": check_icmp_rate,
           "tunnel_gateway": check_tunnel_gateway}


def check_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Some of the settings, checked; unknown names are refused."""
    out = {}
    for k, v in values.items():
        if k not in _CHECKS:
            raise InvalidInput(f"unknown IPv4 setting {k!r} (known: {', '.join(NAMES)})")
        out[k] = _CHECKS[k](v)
    return out
