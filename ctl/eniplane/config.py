"""The declarative file format of `eniplane apply -f` and `eniplane export`.

Contract: the pydantic models below are the format: every level forbids keys it does not know, so a
typo (`port:` for `ports:`, `egres:`, `gatway:`) is an error, never a silently dropped setting, and
`schema()` is the JSON Schema they generate (`eniplane apply --schema`, for editors). `parse(doc)`
checks the shape only and raises InvalidDocument with one line per problem, each naming its path
(`security_groups[0].egress[1]: unknown key 'port' (did you mean 'ports'?)`). What the values mean
(CIDRs, addresses, ports, references) is checked by the State operations in model.py, which
`build_state` goes through exactly as the CLI does. `export_doc(state)` writes what an operator
declares; ENIs are derived, never declared: an `enis:` entry only sets the flow limit of the ENI
some function's (subnet, group set) derives, and naming one no function uses is an error.
`timeouts:`, `limits:`, `ipv4:` and `events:` are node-wide; a key left out means its default
(lifecycle.py, ipv4.py, events.py), so a file is the whole configuration. `node:` is the
exception: the parameters `up` was given (nodeparams.py), which `up` stores; a file without it
keeps the stored ones (a file written on another machine, or before they were stored, must not
take them away). `build_state(doc, current)` reuses the current state's ENIs (address, VNI) wherever the (subnet, group set) still exists, so exporting and
applying again changes nothing. `diff(old, new)` lists what an apply would change.
`read_doc`/`write_text` turn every file error into one FileError line.

    vpcs:     [{id, cidr, iface, gateway, gateway_mac?}]
    subnets:  [{id, vpc, cidr}]
    security_groups: [{id, vpc, egress: [{proto, ports, cidr}], ingress: [...]}]
    workers:  [IP | {ip, mac}, ...]
    functions: [{name, subnets: [...], security_groups: [...], workers: [IP, ...]}]
    enis:     [{subnet, security_groups: [...], max_flows}]
    timeouts: {tcp_established, tcp_transitory, udp, icmp}   (seconds)
    limits:   {flows_per_eni}
    ipv4:     {mss_clamp: bool, icmp_rate, tunnel_gateway}   (ICMP messages per second per CPU)
    events:   {drops: bool, flows: bool, rate}                (events per second per CPU)
    node:     {fabric_if, fabric_ip, netns?, mode?, max_flows?}   (as `eniplane up` was given them)
"""

from __future__ import annotations

import dataclasses
import difflib
from contextlib import contextmanager
from typing import Annotated, Any, Iterator, Optional

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema,
                      model_validator)

from . import events, ipv4, nodeparams
from .errors import EniplaneError, FileError, InvalidInput
from .lifecycle import DEFAULT_FLOWS_PER_ENI, DEFAULT_TIMEOUTS, U32_MAX
from .model import State, group_set
from .sgcompile import PROTO_NUMBERS

KINDS = ("vpcs", "subnets", "security_groups", "workers", "functions")  # lists of named things
SETTINGS = ("timeouts", "limits", "ipv4", "events")  # node-wide mappings


class InvalidDocument(InvalidInput):
    """The file's shape is wrong: one message line per problem, each starting with its path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# ---- the format -----------------------------------------------------------------------------
class _Strict(BaseModel):
    # YAML reads `ports: 80` or `id: 7` as numbers; they mean the text written. Booleans, lists
    # and mappings where text belongs stay errors.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


# Semantic checks live in model.py; these schema hints only help editors.
Proto = Annotated[str, WithJsonSchema({"enum": list(PROTO_NUMBERS)})]
Ports = Annotated[Optional[str], WithJsonSchema({"anyOf": [
    {"type": "string", "pattern": r"^(all|\d{1,5}(-\d{1,5})?)$"}, {"type": "integer"},
    {"type": "null"}]})]


class VpcDoc(_Strict):
    id: str
    cidr: str = Field(description="The VPC's CIDR, e.g. 10.0.0.0/16.")
    iface: str = Field(description="The node's interface into the VPC.")
    gateway: str = Field(description="The VPC gateway's address, inside cidr.")
    gateway_mac: Optional[str] = Field(
        None, description="Pins the gateway's MAC; absent: learned from its first ARP, then kept.")


class SubnetDoc(_Strict):
    id: str
    vpc: str
    cidr: str


class RuleDoc(_Strict):
    proto: Proto = Field(description="tcp, udp, icmp or all.")
    ports: Ports = Field(None, description="'P', 'P-Q' or 'all' (tcp and udp); absent: all.")
    cidr: str = Field(description="The remote side, e.g. 10.0.0.0/16.")


class SecurityGroupDoc(_Strict):
    id: str
    vpc: str
    egress: Optional[list[RuleDoc]] = None
    ingress: Optional[list[RuleDoc]] = None


class WorkerDoc(_Strict):
    """A worker host: its tunnel address, or a mapping that also pins its MAC."""
    model_config = ConfigDict(json_schema_extra=lambda s: s.update(
        {"anyOf": [{"type": "string"}, {k: v for k, v in s.items() if k != "anyOf"}]}))
    ip: str = Field(description="The worker's tunnel (outer source) address.")
    mac: Optional[str] = Field(
        None, description="Pins the worker's MAC; absent: learned from its first frame, then kept.")

    @model_validator(mode="before")
    @classmethod
    def _address_alone(cls, v: Any) -> Any:
        return {"ip": v} if isinstance(v, (str, int)) else v


class FunctionDoc(_Strict):
    name: str
    subnets: list[str]
    security_groups: list[str] = Field(description="At most 5.")
    workers: Optional[list[str]] = Field(
        None, description="The workers it is placed on: only they may send on its ENIs.")


# Strict: `udp: "30"` or `udp: true` is a mistake to report, not a number to guess.
Seconds = Annotated[int, Field(strict=True, ge=1, le=U32_MAX)]


class EniDoc(_Strict):
    """The flow limit of the ENI that functions using this (subnet, group set) share."""
    subnet: str
    security_groups: list[str]
    max_flows: int = Field(strict=True, ge=0, le=U32_MAX,
                           description="Its flows at most; 0: limits.flows_per_eni.")


class TimeoutsDoc(_Strict):
    """Idle timeouts in whole seconds: a flow idle longer is expired and its port free again."""
    tcp_established: Seconds = DEFAULT_TIMEOUTS["tcp_established"]
    tcp_transitory: Seconds = Field(DEFAULT_TIMEOUTS["tcp_transitory"],
                                    description="SYN only, or after FIN or RST.")
    udp: Seconds = DEFAULT_TIMEOUTS["udp"]
    icmp: Seconds = DEFAULT_TIMEOUTS["icmp"]


class LimitsDoc(_Strict):
    flows_per_eni: int = Field(DEFAULT_FLOWS_PER_ENI, strict=True, ge=1, le=U32_MAX,
                               description="Each ENI's flows at most, unless its own max_flows.")


class Ipv4Doc(_Strict):
    """How the node treats IPv4 beyond translation: MSS clamping and the ICMP it generates."""
    mss_clamp: bool = Field(ipv4.DEFAULTS["mss_clamp"], strict=True,
                            description="Lower the MSS of SYNs and SYN/ACKs to what fits the VPC "
                                        "link and the tunnel; off only where something else "
                                        "clamps.")
    icmp_rate: int = Field(ipv4.DEFAULT_ICMP_RATE, strict=True, ge=0, le=U32_MAX,
                           description="ICMP messages the node may generate per second per CPU "
                                       "(time exceeded, fragmentation needed); 0: none.")
    # the address is checked by the State (ipv4.check_tunnel_gateway), as the CLI's is
    tunnel_gateway: Annotated[str, WithJsonSchema({"type": "string", "format": "ipv4"})] = Field(
        ipv4.DEFAULT_TUNNEL_GATEWAY,
        description="The source of the ICMP the node sends into the tunnel: the address "
                    "traceroute shows for the node's hop.")


class EventsDoc(_Strict):
    """What the datapath reports to `eniplane monitor`: sampled drops and new flows."""
    drops: bool = Field(events.DEFAULTS["drops"], strict=True,
                        description="Report dropped packets (sampled at `rate`).")
    flows: bool = Field(events.DEFAULTS["flows"], strict=True,
                        description="Report new flows (sampled at `rate`).")
    rate: int = Field(events.DEFAULT_EVENT_RATE, strict=True, ge=0, le=U32_MAX,
                      description="Events the node may report per second per CPU; 0: none.")


class NodeDoc(_Strict):
    """The parameters `eniplane up` was given; the agent brings the node up with them."""
    fabric_if: str = Field(description="The interface facing the workers.")
    fabric_ip: str = Field(description="The node's tunnel address.")
    netns: Optional[str] = Field(None, description="The node's namespace; absent: the host's.")
    mode: Annotated[str, WithJsonSchema({"enum": list(nodeparams.MODES)})] = Field(
        nodeparams.DEFAULTS["mode"], description="XDP mode: auto, native or generic.")
    max_flows: int = Field(nodeparams.DEFAULTS["max_flows"], strict=True, ge=1,
                           description="Flow table size per direction.")


class Document(_Strict):
    """The desired state of one node, as `eniplane apply -f` takes it."""

    model_config = ConfigDict(title="eniplane configuration")
    vpcs: Optional[list[VpcDoc]] = None
    subnets: Optional[list[SubnetDoc]] = None
    security_groups: Optional[list[SecurityGroupDoc]] = None
    workers: Optional[list[WorkerDoc]] = Field(None, description="Worker hosts.")
    functions: Optional[list[FunctionDoc]] = None
    enis: Optional[list[EniDoc]] = Field(None, description="Per-ENI flow limits.")
    timeouts: Optional[TimeoutsDoc] = None
    limits: Optional[LimitsDoc] = None
    ipv4: Optional[Ipv4Doc] = None
    events: Optional[EventsDoc] = None
    node: Optional[NodeDoc] = Field(None, description="Absent: the stored ones stay.")


def schema() -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **Document.model_json_schema()}


def _yaml_type(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(v), type(v).__name__)


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(loc: tuple) -> type[BaseModel]:
    """The model that validates the mapping at loc (list indexes skipped)."""
    m: type[BaseModel] = Document
    for part in loc:
        if isinstance(part, str):
            m = _inner_model(m.model_fields[part].annotation) or m
    return m


def _inner_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in getattr(tp, "__args__", ()):
        found = _inner_model(arg)
        if found:
            return found
    return None


def _problem(err: dict[str, Any]) -> str:
    loc, kind = tuple(err["loc"]), err["type"]
    where = _path(loc)
    if kind == "extra_forbidden":
        where, key = _path(loc[:-1]), str(loc[-1])
        names = list(_model_at(loc[:-1]).model_fields)
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "keys: " + ", ".join(names)
        msg = f"unknown key {key!r} ({hint})"
    elif kind == "missing":
        where, msg = _path(loc[:-1]), f"missing required key {loc[-1]!r}"
    elif kind == "model_type" and not loc:
        msg = (f"the file must be a mapping with {', '.join(Document.model_fields)}, "
               f"not {_yaml_type(err['input'])}")
    elif kind in ("model_type", "dict_type", "list_type", "string_type"):
        expected = {"list_type": "a list", "string_type": "a string"}.get(kind, "a mapping")
        msg = f"expected {expected}, got {_yaml_type(err['input'])}"
    else:
        msg = err["msg"]
    return f"{where}: {msg}" if where else msg


def parse(doc: Any) -> Document:
    """The document's shape, or InvalidDocument listing every problem."""
    try:
        return Document.model_validate({} if doc is None else doc)
    except ValidationError as e:
        raise InvalidDocument([_problem(err) for err in e.errors()]) from None


# ---- files ----------------------------------------------------------------------------------
def read_doc(file: str) -> Any:
    """The YAML document in file; every way of failing is one line."""
    import yaml

    try:
        with open(file, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except OSError as e:
        raise FileError(f"cannot read {file}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{file}: not a UTF-8 text file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidInput(f"{file}: malformed YAML{where}") from None


def write_text(file: str, text: str) -> None:
    try:
        with open(file, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as e:
        raise FileError(f"cannot write {file}: {e.strerror}") from None


@contextmanager
def within(file: str) -> Iterator[None]:
    """Prefix every line of a domain error with the file it is about (editors jump to it)."""
    try:
        yield
    except EniplaneError as e:
        e.message = "\n".join(f"{file}: {line}" for line in e.message.splitlines())
        raise


# ---- documents and states -------------------------------------------------------------------
def export_doc(st: State) -> dict[str, Any]:
    def rules(g, d):
        return [{"proto": r.proto, "ports": r.ports, "cidr": r.cidr}
                for r in g.rules if r.direction == d]

    return {
        "vpcs": [{"id": v.id, "cidr": v.cidr, "iface": v.iface, "gateway": v.gateway,
                  **({"gateway_mac": v.gateway_mac} if v.gateway_mac else {})}
                 for v in sorted(st.vpcs.values(), key=lambda v: v.idx)],
        "subnets": [{"id": s.id, "vpc": s.vpc, "cidr": s.cidr}
                    for s in sorted(st.subnets.values(), key=lambda s: s.id)],
        "security_groups": [{"id": g.id, "vpc": g.vpc, "egress": rules(g, "egress"),
                             "ingress": rules(g, "ingress")}
                            for g in sorted(st.sgs.values(), key=lambda g: g.id)],
        "workers": [{"ip": w, "mac": st.worker_macs[w]} if w in st.worker_macs else w
                    for w in sorted(st.workers)],
        "functions": [{"name": f.name, "subnets": list(f.subnets),
                       "security_groups": list(f.sgs), "workers": list(f.workers)}
                      for f in sorted(st.functions.values(), key=lambda f: f.name)],
        "enis": [{"subnet": e.subnet, "security_groups": list(e.sgs), "max_flows": e.max_flows}
                 for e in sorted(st.enis.values(), key=lambda e: (e.subnet, e.sgs))
                 if e.max_flows],
        "timeouts": dict(st.timeouts),
        "limits": {"flows_per_eni": st.flows_per_eni},
        "ipv4": {k: st.ipv4[k] for k in ipv4.NAMES},
        "events": {k: st.events[k] for k in events.NAMES},
        **({"node": {k: v for k, v in st.node.items() if v is not None}} if st.node else {}),
    }


@contextmanager
def _at(path: str) -> Iterator[None]:
    """Name the entry a State operation refused."""
    try:
        yield
    except EniplaneError as e:
        e.message = f"{path}: {e.message}"
        raise


def build_state(doc: Any, current: State) -> State:
    d = parse(doc)
    st = State()
    for i, v in enumerate(d.vpcs or []):
        with _at(f"vpcs[{i}]"):
            st.add_vpc(v.id, v.cidr, v.iface, v.gateway, v.gateway_mac)
    # VPCs that stay keep their datapath handle (flow keys use it); new ones get fresh ones
    old_idx = {v.id: v.idx for v in current.vpcs.values()}
    next_idx = max(old_idx.values(), default=0) + 1
    for vpc in st.vpcs.values():
        if vpc.id in old_idx:
            vpc.idx = old_idx[vpc.id]
        else:
            vpc.idx, next_idx = next_idx, next_idx + 1
    for i, s in enumerate(d.subnets or []):
        with _at(f"subnets[{i}]"):
            st.add_subnet(s.id, s.vpc, s.cidr)
    for i, g in enumerate(d.security_groups or []):
        with _at(f"security_groups[{i}]"):
            st.add_sg(g.id, g.vpc)
        for direction in ("egress", "ingress"):
            for j, r in enumerate(getattr(g, direction) or []):
                ports = None if r.ports in (None, "all") else r.ports
                with _at(f"security_groups[{i}].{direction}[{j}]"):
                    st.add_rule(g.id, st.make_rule(direction, r.proto, ports, r.cidr))
    for i, w in enumerate(d.workers or []):
        with _at(f"workers[{i}]"):
            st.add_worker(w.ip, w.mac)
    # ENIs that still fit are offered first, so their addresses and VNIs survive (their limits
    # are the file's to say, below)
    st.enis = {e.id: dataclasses.replace(e, max_flows=0) for e in current.enis.values()
               if e.subnet in st.subnets and all(g in st.sgs for g in e.sgs)}
    seen: set[str] = set()
    for i, fn in enumerate(d.functions or []):
        if fn.name in seen:
            raise InvalidInput(f"functions[{i}]: function {fn.name} is declared twice")
        seen.add(fn.name)
    st.attach_many([(fn.name, fn.subnets, fn.security_groups) for fn in d.functions or []],
                   prune=False)
    for i, fn in enumerate(d.functions or []):
        with _at(f"functions[{i}]"):
            st.place_function(fn.name, fn.workers or [])
    st._prune_enis()
    _eni_limits(st, d.enis or [])
    with _at("timeouts"):
        st.set_timeouts(**(d.timeouts or TimeoutsDoc()).model_dump())
    with _at("limits"):
        st.set_flows_per_eni((d.limits or LimitsDoc()).flows_per_eni)
    with _at("ipv4"):
        st.set_ipv4(**(d.ipv4 or Ipv4Doc()).model_dump())
    with _at("events"):
        st.set_events(**(d.events or EventsDoc()).model_dump())
    if d.node is None:
        st.node = dict(current.node)
    else:
        with _at("node"):
            st.set_node(**d.node.model_dump())
    return st


def _eni_limits(st: State, entries: list[EniDoc]) -> None:
    by_pair = {(e.subnet, e.sgs): e for e in st.enis.values()}
    seen: set[tuple] = set()
    for i, x in enumerate(entries):
        pair = (x.subnet, group_set(x.security_groups))
        with _at(f"enis[{i}]"):
            if pair in seen:
                raise InvalidInput(f"subnet {x.subnet} with security groups "
                                   f"{', '.join(pair[1])} is declared twice")
            seen.add(pair)
            if pair not in by_pair:
                raise InvalidInput(f"no function uses subnet {x.subnet} with security groups "
                                   f"{', '.join(pair[1])}: an ENI exists only while one does")
            st.set_eni_max_flows(by_pair[pair].id, x.max_flows)


def diff(old: State, new: State) -> list[dict[str, str]]:
    """[{op: add|change|delete, kind, id}] in a stable order; a setting changed is
    {op: change, kind: timeouts|limits|ipv4|node, id: its name}."""
    a, b = export_doc(old), export_doc(new)
    out: list[dict[str, str]] = []
    for kind in KINDS:
        def keyed(items):
            if kind == "workers":
                return {w["ip"] if isinstance(w, dict) else w: w for w in items}
            k = "name" if kind == "functions" else "id"
            return {x[k]: x for x in items}

        ka, kb = keyed(a[kind]), keyed(b[kind])
        for k in sorted(set(kb) - set(ka)):
            out.append({"op": "add", "kind": kind, "id": k})
        for k in sorted(set(ka) & set(kb)):
            if ka[k] != kb[k]:
                out.append({"op": "change", "kind": kind, "id": k})
        for k in sorted(set(ka) - set(kb)):
            out.append({"op": "delete", "kind": kind, "id": k})
    ea = {e.id: e for e in old.enis.values()}
    eb = {e.id: e for e in new.enis.values()}
    for k in sorted(set(eb) - set(ea)):
        out.append({"op": "add", "kind": "enis", "id": k})
    for k in sorted(set(ea) & set(eb)):
        if ea[k].max_flows != eb[k].max_flows:
            out.append({"op": "change", "kind": "enis", "id": k})
    for k in sorted(set(ea) - set(eb)):
        out.append({"op": "delete", "kind": "enis", "id": k})
    for kind in SETTINGS:
        out += [{"op": "change", "kind": kind, "id": k}
                for k in a[kind] if a[kind][k] != b[kind][k]]
    na, nb = a.get("node", {}), b.get("node", {})
    out += [{"op": "change", "kind": "node", "id": k}
            for k in nodeparams.NAMES if na.get(k) != nb.get(k)]
    return out
