"""A flow's lifecycle as the datapath judges it, as pure functions.

Contract: mirrors bpf/eniplane.c (flow_timeout, flow_live, flow_claimable) and bpf/types.h
(FLOW_S_*), bpf/consts.h (DEFAULT_TIMEOUT_*, TAKEOVER_GRACE_NS); tests/unit/test_consts.py holds
the numbers equal to the C. A flow's state is the set of TCP events seen (FLOW_S_* bits); its
name here is what `eniplane flows` shows. Times are nanoseconds of the coarse monotonic clock
(CLOCK_MONOTONIC_COARSE, what bpf_ktime_get_coarse_ns reads). The settings' checks
(validate_timeouts, check_seconds, check_flow_limit) raise InvalidInput naming the setting, for the
CLI's option callbacks, `apply -f`, the State's operations and the datapath alike.
"""

from __future__ import annotations

import socket
from typing import Mapping

from .errors import InvalidInput

FLOW_S_SYN, FLOW_S_SYNACK, FLOW_S_EST = 1, 2, 4
FLOW_S_FIN_OUT, FLOW_S_FIN_IN, FLOW_S_RST = 8, 16, 32

# consts.h's DEFAULT_TIMEOUT_*, by the names `eniplane timeouts` uses (whole seconds)
DEFAULT_TIMEOUTS = {"tcp_established": 350, "tcp_transitory": 240, "udp": 350, "icmp": 60}
TIMEOUT_NAMES = tuple(DEFAULT_TIMEOUTS)
# node_cfg's field for each timeout
TIMEOUT_FIELDS = {name: f"timeout_{name}" for name in TIMEOUT_NAMES}
# AWS: 65,000 connections per Hyperplane ENI (RFC 6888 REQ-3/4 ask for a limit)
DEFAULT_FLOWS_PER_ENI = 65000
TAKEOVER_GRACE_NS = 100_000_000
NSEC_PER_SEC = 1_000_000_000
U32_MAX = 0xFFFFFFFF  # node_cfg holds timeouts and limits as u32

STATE_NAMES = ("syn_sent", "syn_received", "established", "fin_wait", "closed", "reset", "active")


def state_name(proto: int, bits: int) -> str:
    """What a flow's state bits say, in one word."""
    if proto != socket.IPPROTO_TCP:
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


def timeout_name(proto: int, bits: int) -> str:
    """Which of the node's timeouts a flow is judged by."""
    if proto == socket.IPPROTO_TCP:
        done = FLOW_S_FIN_OUT | FLOW_S_FIN_IN | FLOW_S_RST
        return "tcp_established" if bits & (FLOW_S_EST | done) == FLOW_S_EST else "tcp_transitory"
    return "udp" if proto == socket.IPPROTO_UDP else "icmp"


def timeout_ns(proto: int, bits: int, timeouts: Mapping[str, int]) -> int:
    return timeouts[timeout_name(proto, bits)] * NSEC_PER_SEC


def idle_ns(last_seen_ns: int, now_ns: int) -> int:
    return now_ns - last_seen_ns


def is_live(proto: int, bits: int, last_seen_ns: int, now_ns: int,
            timeouts: Mapping[str, int]) -> bool:
    """flow_live: seen (0 is an entry changing hands), not idle past its timeout, not reset."""
    return (last_seen_ns != 0 and idle_ns(last_seen_ns, now_ns) <= timeout_ns(proto, bits, timeouts)
            and not bits & FLOW_S_RST)


def is_expired(proto: int, bits: int, last_seen_ns: int, now_ns: int,
               timeouts: Mapping[str, int]) -> bool:
    """Idle past its timeout: its port may go to another tuple (after the grace) and the sweeper
    may remove it. A reset flow that is not expired yet is dead but keeps its port."""
    return last_seen_ns != 0 and idle_ns(last_seen_ns, now_ns) > timeout_ns(proto, bits, timeouts)


def validate_timeouts(values: Mapping[str, object]) -> dict[str, int]:
    """Some timeouts by name, checked; an unknown name is an error, never ignored."""
    out = {}
    for name, v in values.items():
        if name not in DEFAULT_TIMEOUTS:
            raise InvalidInput(f"unknown timeout {name!r} (known: {', '.join(TIMEOUT_NAMES)})")
        out[name] = check_seconds(f"timeout {name}", v)
    return out


def check_seconds(what: str, value: object) -> int:
    """One timeout: whole seconds, at least 1 (a test may use 1 s; 0 would expire everything).
    Messages are "{what}: {problem}", as model.py's parsers say them."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what}: {value!r} is not a whole number of seconds")
    if not 1 <= value <= U32_MAX:
        raise InvalidInput(f"{what}: {value} s is outside 1-{U32_MAX}")
    return value


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
