"""Command-line values checked where they are parsed: a malformed address, CIDR, port range,
protocol, timeout, flow limit or IPv4 setting is a usage error (exit 2) naming the option, before
any command runs.

Contract: each name here is a Typer option/argument callback; it returns the value unchanged when
it is well formed and otherwise raises typer.BadParameter for that parameter, which click reports
naming it, with exit code 2. The rules are model.py's, lifecycle.py's and ipv4.py's own checks, so
the CLI and `apply -f` accept exactly the same values; what depends on other values (a gateway
inside its VPC, ports with icmp) stays model.py's to check.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import typer

from .errors import InvalidInput
from .ipv4 import check_icmp_rate, check_tunnel_gateway
from .lifecycle import check_flow_limit, check_seconds
from .model import parse_cidr, parse_ip, parse_mac, parse_ports
from .sgcompile import PROTO_NUMBERS


def _checked(check: Callable[[Any], object]) -> Callable[..., Any]:
    def callback(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        if value is None or ctx.resilient_parsing:  # absent optional value; shell completion
            return value
        try:
            check(value)
        except InvalidInput as e:
            # The parsers say "{what}: {problem}"; given the param, click names the option
            # (its hint: '--fabric-ip' / '-a', or an argument's 'IP'), so only the problem.
            raise typer.BadParameter(str(e).removeprefix(": "), ctx=ctx, param=param) from None
        return value

    return callback


def _proto(value: str) -> None:
    if value not in PROTO_NUMBERS:
        raise InvalidInput(f"{value!r} is not a protocol: use {', '.join(PROTO_NUMBERS)}")


ipv4 = _checked(lambda v: parse_ip(v, ""))
cidr = _checked(lambda v: parse_cidr(v, ""))
# syntax and range only: whether the protocol takes ports is the rule's to say
ports = _checked(lambda v: parse_ports(v, "tcp"))
proto = _checked(_proto)
mac = _checked(lambda v: parse_mac(v, ""))
seconds = _checked(lambda v: check_seconds("", v))  # an idle timeout
flow_limit = _checked(lambda v: check_flow_limit("", v))
eni_flow_limit = _checked(lambda v: check_flow_limit("", v, zero="the node default"))
icmp_rate = _checked(check_icmp_rate)
tunnel_gateway = _checked(check_tunnel_gateway)
