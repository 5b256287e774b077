"""The node's own parameters, as `up` was given them: what the agent needs to bring it up again.

Contract: the names and checks of the stored `up` parameters (fabric interface, fabric IP,
namespace, XDP mode, flow table size). `check_params` raises InvalidInput naming the parameter,
for `up`, `apply -f` and the State alike; a State whose `node` is empty has none stored (a node
that was never brought up by this eniplane), and the agent then refuses to start.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Mapping

from .errors import InvalidInput
from .loader import DEFAULT_MAX_FLOWS

MODES = ("auto", "native", "generic")
REQUIRED = ("fabric_if", "fabric_ip")
NAMES = ("fabric_if", "fabric_ip", "netns", "mode", "max_flows")
DEFAULTS: dict[str, Any] = {"netns": None, "mode": "auto", "max_flows": DEFAULT_MAX_FLOWS}
_IFNAME = re.compile(r"^[^\s/]{1,15}$")
_NETNS = re.compile(r"^[^\s/]{1,255}$")


def _ifname(v: Any) -> str:
    if not isinstance(v, str) or not _IFNAME.match(v):
        raise InvalidInput(f"fabric_if must be an interface name, not {v!r}")
    return v


def _ip(v: Any) -> str:
    try:
        return str(ipaddress.IPv4Address(v))
    except (ValueError, TypeError):
        raise InvalidInput(f"fabric_ip must be an IPv4 address, not {v!r}") from None


def _netns(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not _NETNS.match(v) or v in (".", ".."):
        raise InvalidInput(f"netns must be a namespace name, not {v!r}")
    return v


def _mode(v: Any) -> str:
    if v not in MODES:
        raise InvalidInput(f"mode must be one of {', '.join(MODES)}, not {v!r}")
    return v


def _max_flows(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1 << 30:
        raise InvalidInput(f"max_flows must be a whole number of flows from 1 to {1 << 30}, "
                           f"not {v!r}")
    return v


_CHECKS = {"fabric_if": _ifname, "fabric_ip": _ip, "netns": _netns, "mode": _mode,
           "max_flows": _max_flows}


def check_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """A whole set of parameters, checked and completed with the defaults."""
    unknown = set(values) - set(NAMES)
    if unknown:
        raise InvalidInput(f"unknown node parameter {sorted(unknown)[0]!r} "
                           f"(known: {', '.join(NAMES)})")
    for k in REQUIRED:
        if values.get(k) is None:
            raise InvalidInput(f"node parameter {k} is required")
    full = {**DEFAULTS, **values}
    return {k: _CHECKS[k](full[k]) for k in NAMES}
