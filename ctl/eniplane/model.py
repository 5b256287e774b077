"""The desired state in customers' terms: VPCs, subnets, security groups, workers, functions and
the shared ENIs derived from them.

Contract: a State is plain data plus the operations an operator performs on it. Every operation
validates first and changes nothing when it raises (InvalidInput, NotFound, AlreadyExists), so a
caller can run several and persist the result only if all succeed. Following AWS Lambda, every
function with the same (subnet, security-group set) shares one ENI; an ENI that no function uses
any more is deleted, its own flow limit (max_flows) with it. Addresses skip the first four and
the last address of a subnet, as AWS does. The node-wide settings, the flow lifecycle's (idle
timeouts, flows per ENI: lifecycle.py) and IPv4's (MSS clamping, ICMP rate, tunnel gateway:
ipv4.py), are part of the State like the rest of the configuration, and so are the parameters
`up` was given (nodeparams.py), which the agent brings the node up with.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import events as events_settings
from . import ipv4 as ipv4_settings
from . import nodeparams
from .errors import AlreadyExists, InvalidInput, NotFound
from .lifecycle import (DEFAULT_FLOWS_PER_ENI, DEFAULT_TIMEOUTS, check_flow_limit,
                        validate_timeouts)
from .sgcompile import PROTO_NUMBERS, Rule

# consts.h's MAX_SG_PER_ENI and MAX_RULES_PER_SG (per direction): tests/unit/test_consts.py
MAX_SG_PER_ENI = 5
MAX_RULES_PER_DIRECTION = 60
DEFAULT_PORT_RANGE = (1024, 65535)
VNI_FIRST, VNI_LAST = 4096, (1 << 24) - 1
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
_IFNAME = re.compile(r"^[^\s/]{1,15}$")


def check_id(kind: str, value: str) -> str:
    if not _ID.match(value or ""):
        raise InvalidInput(f"invalid {kind} id {value!r}: use letters, digits, '.', '_', ':' or '-'")
    return value


def parse_cidr(value: str, what: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError as e:
        raise InvalidInput(f"{what}: invalid CIDR {value!r} ({e})") from None


def parse_ip(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidInput(f"{what}: invalid IPv4 address {value!r}") from None


def parse_ports(value: str | None, proto: str) -> tuple[int, int]:
    """'P' or 'P-Q' -> (P, Q); None means every port. ICMP and 'all' take no ports."""
    if value is None:
        return (0, 65535)
    if not str(value).strip():
        raise InvalidInput("empty port range: give P or P-Q, or leave --ports out for all ports")
    if proto in ("icmp", "all"):
        raise InvalidInput(f"--ports does not apply to protocol {proto}")
    m = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", str(value).strip())
    if not m:
        raise InvalidInput(f"invalid port range {value!r}: use P or P-Q")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
        raise InvalidInput(f"port range {value!r} is outside 0-65535")
    if hi < lo:
        raise InvalidInput(f"port range {value!r} is inverted")
    return (lo, hi)


def parse_mac(value: str, what: str) -> str:
    """A unicast Ethernet address, in the one spelling the maps use (lower case, colons)."""
    m = re.fullmatch(r"([0-9A-Fa-f]{2})([:-]?)((?:[0-9A-Fa-f]{2}\2){4}[0-9A-Fa-f]{2})", value or "")
    if not m:
        raise InvalidInput(f"{what}: invalid MAC address {value!r}: use six hex pairs, "
                           f"e.g. 02:00:00:00:00:01")
    raw = bytes.fromhex(re.sub(r"[:-]", "", value))
    if raw[0] & 1 or raw == bytes(6):
        raise InvalidInput(f"{what}: {value} is not a unicast MAC address")
    return ":".join(f"{b:02x}" for b in raw)


def group_set(sgs: Iterable[str]) -> tuple[str, ...]:
    """A security-group set in the one order that identifies an ENI (with its subnet)."""
    return tuple(sorted(set(sgs)))


@dataclass
class Vpc:
    id: str
    cidr: str
    iface: str
    gateway: str
    idx: int  # the datapath's handle (flow keys, eni_addrs)
    gateway_mac: str | None = None  # set by the operator; None: learned by ARP, then kept


@dataclass
class Subnet:
    id: str
    vpc: str
    cidr: str


@dataclass(frozen=True)
class SgRule:
    direction: str  # egress | ingress
    proto: str      # tcp | udp | icmp | all
    port_lo: int
    port_hi: int
    cidr: str

    @property
    def ports(self) -> str:
        if self.proto in ("icmp", "all") or (self.port_lo, self.port_hi) == (0, 65535):
            return "all"
        return str(self.port_lo) if self.port_lo == self.port_hi else f"{self.port_lo}-{self.port_hi}"

    def datapath_rule(self) -> Rule:
        return Rule.of(self.proto, self.cidr, (self.port_lo, self.port_hi))


@dataclass
class SecurityGroup:
    id: str
    vpc: str
    rules: list[SgRule] = field(default_factory=list)

    def count(self, direction: str) -> int:
        return sum(1 for r in self.rules if r.direction == direction)


@dataclass
class Eni:
    id: str
    subnet: str
    sgs: tuple[str, ...]  # sorted: the set is what identifies the ENI
    address: str
    vni: int
    idx: int
    port_lo: int = DEFAULT_PORT_RANGE[0]
    port_hi: int = DEFAULT_PORT_RANGE[1]
    # Its own flow limit; 0: the node's flows_per_eni. A field of the ENI, so it goes with it
    # when the last function using the ENI does.
    max_flows: int = 0


@dataclass
class Function:
    name: str
    subnets: list[str]
    sgs: list[str]
    workers: list[str] = field(default_factory=list)  # where it is placed: who may send for it


@dataclass
class State:
    vpcs: dict[str, Vpc] = field(default_factory=dict)
    subnets: dict[str, Subnet] = field(default_factory=dict)
    sgs: dict[str, SecurityGroup] = field(default_factory=dict)
    workers: set[str] = field(default_factory=set)
    worker_macs: dict[str, str] = field(default_factory=dict)  # static MACs set by the operator
    enis: dict[str, Eni] = field(default_factory=dict)
    functions: dict[str, Function] = field(default_factory=dict)
    # node-wide flow lifecycle settings (lifecycle.py): idle timeouts in seconds, per-ENI limit
    timeouts: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    flows_per_eni: int = DEFAULT_FLOWS_PER_ENI
    # node-wide IPv4 settings (ipv4.py): mss_clamp, icmp_rate, tunnel_gateway
    ipv4: dict[str, Any] = field(default_factory=lambda: dict(ipv4_settings.DEFAULTS))
    # the parameters of the last `up` (nodeparams.py); empty: none stored
    node: dict[str, Any] = field(default_factory=dict)
    # node-wide events settings (events.py): drops, flows, rate
    events: dict[str, Any] = field(default_factory=lambda: dict(events_settings.DEFAULTS))

    def copy(self) -> "State":
        return copy.deepcopy(self)

    # ---- look-ups --------------------------------------------------------------------------
    def vpc(self, vid: str) -> Vpc:
        if vid not in self.vpcs:
            raise NotFound(f"VPC {vid} does not exist")
        return self.vpcs[vid]

    def subnet(self, sid: str) -> Subnet:
        if sid not in self.subnets:
            raise NotFound(f"subnet {sid} does not exist")
        return self.subnets[sid]

    def sg(self, gid: str) -> SecurityGroup:
        if gid not in self.sgs:
            raise NotFound(f"security group {gid} does not exist")
        return self.sgs[gid]

    def eni(self, eid: str) -> Eni:
        if eid not in self.enis:
            raise NotFound(f"ENI {eid} does not exist")
        return self.enis[eid]

    def eni_functions(self, eid: str) -> list[str]:
        return self.eni_users()[eid]

    def eni_rules(self, e: Eni) -> list[Rule]:
        return [r.datapath_rule() for g in e.sgs for r in self.sgs[g].rules
                if r.direction == "egress"]

    def eni_flow_limit(self, e: Eni) -> int:
        """The limit the datapath applies to an ENI: its own, else the node's."""
        return e.max_flows or self.flows_per_eni

    # ---- flow lifecycle --------------------------------------------------------------------
    def set_timeouts(self, **seconds: int) -> dict[str, int]:
        """Change some of the idle timeouts; returns all four."""
        if not seconds:
            raise InvalidInput("no timeout given")
        self.timeouts.update(validate_timeouts(seconds))
        return dict(self.timeouts)

    def set_flows_per_eni(self, n: int) -> None:
        self.flows_per_eni = check_flow_limit("flows per ENI", n)

    def set_eni_max_flows(self, eid: str, n: int) -> Eni:
        e = self.eni(eid)
        e.max_flows = check_flow_limit(f"ENI {eid} max flows", n, zero="the node default")
        return e

    # ---- IPv4 -------------------------------------------------------------------------------
    def set_ipv4(self, **values: Any) -> dict[str, Any]:
        """Change some of the IPv4 settings, all or none; returns all three."""
        if not values:
            raise InvalidInput("no IPv4 setting given")
        self.ipv4.update(ipv4_settings.check_settings(values))
        return dict(self.ipv4)

    # ---- the node's own parameters ------------------------------------------------------------
    def set_node(self, **values: Any) -> dict[str, Any]:
        """Replace the stored `up` parameters, all at once (missing optional ones: defaults)."""
        self.node = nodeparams.check_params(values)
        return dict(self.node)

    # ---- events ------------------------------------------------------------------------------
    def set_events(self, **values: Any) -> dict[str, Any]:
        """Change some of the events settings, all or none; returns all three."""
        if not values:
            raise InvalidInput("no events setting given")
        self.events.update(events_settings.check_settings(values))
        return dict(self.events)

    # ---- VPCs ------------------------------------------------------------------------------
    def add_vpc(self, vid: str, cidr: str, iface: str, gateway: str,
                gateway_mac: str | None = None) -> Vpc:
        check_id("VPC", vid)
        if vid in self.vpcs:
            raise AlreadyExists(f"VPC {vid} already exists")
        net = parse_cidr(cidr, f"VPC {vid}")
        gw = parse_ip(gateway, f"VPC {vid} --gateway")
        if gw not in net:
            raise InvalidInput(f"VPC {vid}: gateway {gw} is outside {net}")
        if not _IFNAME.match(iface or ""):
            raise InvalidInput(f"VPC {vid}: invalid interface name {iface!r}")
        for other in self.vpcs.values():
            if other.iface == iface:
                raise InvalidInput(f"VPC {vid}: interface {iface} already leads into VPC {other.id}")
        mac = parse_mac(gateway_mac, f"VPC {vid} --gateway-mac") if gateway_mac else None
        idx = max((v.idx for v in self.vpcs.values()), default=0) + 1
        v = Vpc(vid, str(net), iface, str(gw), idx, mac)
        self.vpcs[vid] = v
        return v

    def del_vpc(self, vid: str) -> None:
        self.vpc(vid)
        users = [s.id for s in self.subnets.values() if s.vpc == vid] + \
                [g.id for g in self.sgs.values() if g.vpc == vid]
        if users:
            raise InvalidInput(f"VPC {vid} is still in use by {', '.join(sorted(users))}")
        del self.vpcs[vid]

    # ---- subnets ---------------------------------------------------------------------------
    def add_subnet(self, sid: str, vpc: str, cidr: str) -> Subnet:
        check_id("subnet", sid)
        if sid in self.subnets:
            raise AlreadyExists(f"subnet {sid} already exists")
        v = self.vpc(vpc)
        net = parse_cidr(cidr, f"subnet {sid}")
        if not net.subnet_of(ipaddress.IPv4Network(v.cidr)):
            raise InvalidInput(f"subnet {sid}: {net} is outside VPC {vpc} ({v.cidr})")
        if net.prefixlen > 28:
            raise InvalidInput(f"subnet {sid}: {net} is smaller than a /28 (AWS's minimum)")
        for o in self.subnets.values():
            if o.vpc == vpc and net.overlaps(ipaddress.IPv4Network(o.cidr)):
                raise InvalidInput(f"subnet {sid}: {net} overlaps subnet {o.id} ({o.cidr})")
        s = Subnet(sid, vpc, str(net))
        self.subnets[sid] = s
        return s

    def del_subnet(self, sid: str) -> None:
        self.subnet(sid)
        users = sorted(f.name for f in self.functions.values() if sid in f.subnets)
        if users:
            raise InvalidInput(f"subnet {sid} is still used by function {', '.join(users)}")
        del self.subnets[sid]

    # ---- security groups -------------------------------------------------------------------
    def add_sg(self, gid: str, vpc: str) -> SecurityGroup:
        check_id("security group", gid)
        if gid in self.sgs:
            raise AlreadyExists(f"security group {gid} already exists")
        self.vpc(vpc)
        g = SecurityGroup(gid, vpc)
        self.sgs[gid] = g
        return g

    def del_sg(self, gid: str) -> None:
        self.sg(gid)
        users = sorted(f.name for f in self.functions.values() if gid in f.sgs)
        if users:
            raise InvalidInput(f"security group {gid} is still used by function {', '.join(users)}")
        del self.sgs[gid]

    @staticmethod
    def make_rule(direction: str, proto: str, ports: str | None, cidr: str) -> SgRule:
        if direction not in ("egress", "ingress"):
            raise InvalidInput(f"direction must be egress or ingress, not {direction!r}")
        if proto not in PROTO_NUMBERS:
            raise InvalidInput(f"protocol must be tcp, udp, icmp or all, not {proto!r}")
        lo, hi = parse_ports(ports, proto)
        net = parse_cidr(cidr, "rule --cidr")
        return SgRule(direction, proto, lo, hi, str(net))

    def add_rule(self, gid: str, rule: SgRule) -> None:
        g = self.sg(gid)
        if rule in g.rules:
            raise AlreadyExists(f"security group {gid} already has this {rule.direction} rule")
        if g.count(rule.direction) >= MAX_RULES_PER_DIRECTION:
            raise InvalidInput(f"security group {gid} already has {MAX_RULES_PER_DIRECTION} "
                               f"{rule.direction} rules (the limit)")
        g.rules.append(rule)

    def del_rule(self, gid: str, rule: SgRule) -> None:
        g = self.sg(gid)
        if rule not in g.rules:
            raise NotFound(f"security group {gid} has no such {rule.direction} rule")
        g.rules.remove(rule)

    # ---- workers ---------------------------------------------------------------------------
    def add_worker(self, ip: str, mac: str | None = None) -> None:
        a = str(parse_ip(ip, "worker"))
        if a in self.workers:
            raise AlreadyExists(f"worker {a} already exists")
        m = parse_mac(mac, f"worker {a} --mac") if mac else None
        self.workers.add(a)
        if m:
            self.worker_macs[a] = m

    def del_worker(self, ip: str) -> None:
        """A worker that goes takes its placements with it: nothing may be sent from it."""
        a = self.worker(ip)
        self.workers.remove(a)
        self.worker_macs.pop(a, None)
        for f in self.functions.values():
            if a in f.workers:
                f.workers.remove(a)

    def worker(self, ip: str) -> str:
        a = str(parse_ip(ip, "worker"))
        if a not in self.workers:
            raise NotFound(f"worker {a} does not exist (eniplane worker add {a})")
        return a

    # ---- placement -------------------------------------------------------------------------
    def place_function(self, name: str, workers: Iterable[str]) -> list[str]:
        """Let workers send for a function (on every ENI it uses); returns its placement."""
        f = self.function(name)
        add = [self.worker(w) for w in workers]
        for a in add:
            if a not in f.workers:
                f.workers.append(a)
        return list(f.workers)

    def unplace_function(self, name: str, workers: Iterable[str]) -> list[str]:
        f = self.function(name)
        drop = [self.worker(w) for w in workers]
        for a in drop:
            if a not in f.workers:
                raise NotFound(f"function {name} is not placed on worker {a}")
        f.workers = [w for w in f.workers if w not in drop]
        return list(f.workers)

    def placements(self) -> dict[tuple[str, int], int]:
        """(worker, VNI) -> how many functions let that worker send on that ENI."""
        by_pair = {(e.subnet, e.sgs): e for e in self.enis.values()}
        out: dict[tuple[str, int], int] = {}
        for f in self.functions.values():
            key = group_set(f.sgs)
            for s in f.subnets:
                e = by_pair.get((s, key))
                if e is None:
                    continue
                for w in f.workers:
                    out[(w, e.vni)] = out.get((w, e.vni), 0) + 1
        return out

    def function(self, name: str) -> Function:
        if name not in self.functions:
            raise NotFound(f"function {name} does not exist")
        return self.functions[name]

    # ---- functions and ENIs ----------------------------------------------------------------
    def attach_function(self, name: str, subnets: Iterable[str], sgs: Iterable[str],
                        prune: bool = True) -> list[Eni]:
        """Attach (or re-attach) a function; returns its ENI per subnet, in the given order."""
        return self.attach_many([(name, list(subnets), list(sgs))], prune)[0]

    def attach_many(self, functions: list[tuple[str, list[str], list[str]]],
                    prune: bool = True) -> list[list[Eni]]:
        """Attach several functions at once, all or none. The ENI of each (subnet, group set)
        is found or created through indexes built once, so a declarative apply of thousands of
        functions stays linear. prune=False keeps ENIs that no function uses yet (an apply
        offers the current ENIs first, then prunes once at the end)."""
        checked = [self._check_function(n, s, g) for n, s, g in functions]
        alloc = _Allocator(self)
        saved_functions = dict(self.functions)
        created: list[str] = []
        out = []
        try:
            for name, subnets, groups in checked:
                old = saved_functions.get(name)
                self.functions[name] = Function(name, subnets, list(groups),
                                                list(old.workers) if old else [])
                enis = []
                for s in subnets:
                    e = alloc.by_pair.get((s, groups))
                    if e is None:
                        e = alloc.new_eni(s, groups)
                        created.append(e.id)
                    enis.append(e)
                out.append(enis)
        except BaseException:
            for eid in created:
                del self.enis[eid]
            self.functions = saved_functions
            raise
        if prune:
            self._prune_enis()
        return out

    def _check_function(self, name: str, subnets: list[str],
                        sgs: list[str]) -> tuple[str, list[str], tuple[str, ...]]:
        check_id("function", name)
        subnets = list(dict.fromkeys(subnets))
        groups = group_set(sgs)
        if not subnets:
            raise InvalidInput(f"function {name}: at least one --subnet is needed")
        if not groups:
            raise InvalidInput(f"function {name}: at least one --sg is needed")
        if len(groups) > MAX_SG_PER_ENI:
            raise InvalidInput(f"function {name}: {len(groups)} security groups; an ENI takes at "
                               f"most {MAX_SG_PER_ENI}")
        vpcs = {self.vpc(self.subnet(s).vpc).id for s in subnets}
        if len(vpcs) > 1:
            raise InvalidInput(f"function {name}: subnets span VPCs {', '.join(sorted(vpcs))}")
        (vpc,) = vpcs
        for g in groups:
            if self.sg(g).vpc != vpc:
                raise InvalidInput(f"function {name}: security group {g} belongs to VPC "
                                   f"{self.sgs[g].vpc}, not {vpc}")
        return name, subnets, groups

    def detach_function(self, name: str) -> None:
        if name not in self.functions:
            raise NotFound(f"function {name} does not exist")
        del self.functions[name]
        self._prune_enis()

    def function_enis(self, name: str) -> list[Eni]:
        f = self.functions[name]
        key = group_set(f.sgs)
        return [e for s in f.subnets for e in self.enis.values() if e.subnet == s and e.sgs == key]

    def _prune_enis(self) -> None:
        used = {(s, group_set(f.sgs)) for f in self.functions.values() for s in f.subnets}
        for eid in [e.id for e in self.enis.values() if (e.subnet, e.sgs) not in used]:
            del self.enis[eid]

    def eni_users(self) -> dict[str, list[str]]:
        """ENI id -> the functions it serves, for every ENI at once."""
        by_pair = {(e.subnet, e.sgs): e.id for e in self.enis.values()}
        out: dict[str, list[str]] = {e: [] for e in self.enis}
        for f in sorted(self.functions.values(), key=lambda f: f.name):
            key = group_set(f.sgs)
            for s in f.subnets:
                if (s, key) in by_pair:
                    out[by_pair[(s, key)]].append(f.name)
        return out


class _Allocator:
    """Indexes over a State's ENIs for one batch of attachments: which ENI serves a (subnet,
    group set), and the next free address, VNI and handle, each found without rescanning."""

    def __init__(self, st: State):
        self.st = st
        self.by_pair = {(e.subnet, e.sgs): e for e in st.enis.values()}
        self.used_addr: dict[str, set[str]] = {}
        for e in st.enis.values():
            self.used_addr.setdefault(e.subnet, set()).add(e.address)
        self.next_addr: dict[str, int] = {}
        self.used_vni = {e.vni for e in st.enis.values()}
        self.next_vni = max(self.used_vni, default=VNI_FIRST - 1) + 1
        self.used_idx = {e.idx for e in st.enis.values()}
        self.next_idx = 1

    def new_eni(self, subnet: str, groups: tuple[str, ...]) -> Eni:
        e = Eni(id=self._id(), subnet=subnet, sgs=groups, address=self._address(subnet),
                vni=self._vni(), idx=self._idx())
        self.st.enis[e.id] = e
        self.by_pair[(subnet, groups)] = e
        return e

    def _id(self) -> str:
        while True:
            eid = "eni-" + secrets.token_hex(9)[:17]
            if eid not in self.st.enis:
                return eid

    def _address(self, subnet: str) -> str:
        net = ipaddress.IPv4Network(self.st.subnets[subnet].cidr)
        used = self.used_addr.setdefault(subnet, set())
        first, last = int(net.network_address) + 4, int(net.broadcast_address) - 1
        a = self.next_addr.get(subnet, first)
        while a <= last and str(ipaddress.IPv4Address(a)) in used:
            a += 1
        if a > last:
            raise InvalidInput(f"subnet {subnet} ({net}) has no free address left")
        addr = str(ipaddress.IPv4Address(a))
        used.add(addr)
        self.next_addr[subnet] = a + 1
        return addr

    def _vni(self) -> int:
        v = self.next_vni
        if v > VNI_LAST:
            v = next((x for x in range(VNI_FIRST, VNI_LAST + 1) if x not in self.used_vni), None)
            if v is None:
                raise InvalidInput("no free VNI left")
        self.used_vni.add(v)
        self.next_vni = v + 1
        return v

    def _idx(self) -> int:
        while self.next_idx in self.used_idx:
            self.next_idx += 1
        self.used_idx.add(self.next_idx)
        return self.next_idx
