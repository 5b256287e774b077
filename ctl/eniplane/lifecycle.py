"""A flow's life in user space's terms: its state name, its idle timeout, whether it is live, and
the node-wide settings (idle timeouts, per-ENI flow limit) with their defaults and bounds.

Contract: pure functions over a flow's protocol, state bits (bpf/types.h FLOW_S_*) and times in
nanoseconds of the datapath's clock (CLOCK_MONOTONIC_COARSE); nothing here reads a map. The rules
are the datapath's (issue 13): a TCP flow is timed by `tcp_established` once the environment
acknowledged the SYN/ACK and while neither side sent FIN or RST, by `tcp_transitory` otherwise;
UDP by `udp`, ICMP by `icmp`. A flow is expired when its idle time is strictly greater than its
timeout, and live when it is not expired, has been seen, and (TCP) was not reset. The check_*
functions raise InvalidInput naming the setting, for the CLI's option callbacks, `apply -f` and
the State operations alike.
"""

from __future__ import annotations

from typing import Mapping

from .errors import InvalidInput

PROTO_TCP, PROTO_UDP, PROTO_ICMP = 6, 17, 1

# struct flow's `state` bits (bpf/types.h)
FLOW_S_SYN = 1       # SYN from the environment
FLOW_S_SYNACK = 2    # SYN+ACK from the VPC
FLOW_S_EST = 4       # the environment's ACK after the SYN/ACK
FLOW_S_FIN_OUT = 8   # FIN from the environment
FLOW_S_FIN_IN = 16   # FIN from the VPC
FLOW_S_RST = 32      # RST either way

# AWS's values: NAT gateway and Lambda's Hyperplane ENIs time an idle established TCP connection
# out after 350 s; RFC 5382 / 4787 fill in what AWS leaves unsaid.
DEFAULT_TIMEOUTS: dict[str, int] = {"tcp_established": 350, "tcp_transitory": 240, "udp": 350,
                                    "icmp": 60}
TIMEOUT_NAMES = tuple(DEFAULT_TIMEOUTS)
# A Hyperplane ENI's connection limit.
DEFAULT_FLOWS_PER_ENI = 65000
# The maps hold both as u32.
U32_MAX = (1 << 32) - 1
NS = 1_000_000_000


def state_name(proto: int, bits: int) -> str:
    """The name `flows` shows for a flow's state bits."""
    if proto != PROTO_TCP:
        return "active"
    if bits & FLOW_S_RST:
        return "reset"
    fins = bits & (FLOW_S_FIN_OUT | FLOW_S_FIN_IN)
    if fins == FLOW_S_FIN_OUT | FLOW_S_FIN_IN:
        return "closed"
    if fins:
        return "fin_wait"
    if bits & FLOW_S_EST:
        return "established"
    if bits & FLOW_S_SYNACK:
        return "syn_received"
    return "syn_sent"


def timeout_kind(proto: int, bits: int) -> str:
    """Which of the four timeouts judges a flow."""
    if proto == PROTO_TCP:
        ended = bits & (FLOW_S_FIN_OUT | FLOW_S_FIN_IN | FLOW_S_RST)
        return "tcp_established" if bits & FLOW_S_EST and not ended else "tcp_transitory"
    return "udp" if proto == PROTO_UDP else "icmp"


def timeout_s(proto: int, bits: int, timeouts: Mapping[str, int]) -> int:
    """A flow's idle timeout in seconds under the given settings."""
    return timeouts[timeout_kind(proto, bits)]


def expired(proto: int, bits: int, idle_ns: int, timeouts: Mapping[str, int]) -> bool:
    return idle_ns > timeout_s(proto, bits, timeouts) * NS


def is_live(proto: int, bits: int, last_seen_ns: int, now_ns: int,
            timeouts: Mapping[str, int]) -> bool:
    """Would the datapath still forward this flow's packets as an established flow?"""
    if not last_seen_ns or (proto == PROTO_TCP and bits & FLOW_S_RST):
        return False
    return not expired(proto, bits, max(0, now_ns - last_seen_ns), timeouts)


# ---- settings --------------------------------------------------------------------------------
def check_seconds(what: str, value: object) -> int:
    """One timeout: whole seconds, at least 1 (a test may use 1 s; 0 would expire everything).
    Messages are "{what}: {problem}", as model.py's parsers say them."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what}: {value!r} is not a whole number of seconds")
    if not 1 <= value <= U32_MAX:
        raise InvalidInput(f"{what}: {value} s is outside 1-{U32_MAX}")
    return value


def check_timeouts(changes: Mapping[str, object]) -> dict[str, int]:
    """Some of the four timeouts, checked; an unknown name is an error, never ignored."""
    out = {}
    for name, value in changes.items():
        if name not in DEFAULT_TIMEOUTS:
            raise InvalidInput(f"no timeout named {name!r} (timeouts: {', '.join(TIMEOUT_NAMES)})")
        out[name] = check_seconds(f"timeout {name}", value)
    return out


def check_flow_limit(what: str, value: object, zero: str | None = None) -> int:
    """A flow limit: at least 1, or 0 when `zero` says what 0 means (an ENI's override: the
    node default)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what}: {value!r} is not a whole number")
    low = 0 if zero else 1
    if not low <= value <= U32_MAX:
        raise InvalidInput(f"{what}: {value} is outside {low}-{U32_MAX}"
                           + (f" (0: {zero})" if zero else ""))
    return value
