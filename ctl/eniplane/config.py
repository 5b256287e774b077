"""The declarative file format of `eniplane apply -f` and `eniplane export`.

Contract: `export_doc(state)` writes what an operator declares (VPCs, subnets, security groups,
workers, functions); ENIs are derived, never declared. `build_state(doc, current)` builds the
State that the document describes through the same validated operations the CLI uses, reusing the
current state's ENIs (address, VNI) wherever the (subnet, group set) still exists, so exporting and
applying again changes nothing. `diff(old, new)` lists what an apply would change.

    vpcs:     [{id, cidr, iface, gateway, gateway_mac?}]
    subnets:  [{id, vpc, cidr}]
    security_groups: [{id, vpc, egress: [{proto, ports, cidr}], ingress: [...]}]
    workers:  [IP | {ip, mac}, ...]
    functions: [{name, subnets: [...], security_groups: [...], workers: [IP, ...]}]
"""

from __future__ import annotations

from typing import Any

from .errors import EniplaneError, InvalidInput
from .model import State

KINDS = ("vpcs", "subnets", "security_groups", "workers", "functions")


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
    }


def _items(doc: dict, kind: str) -> list:
    v = doc.get(kind) or []
    if not isinstance(v, list):
        raise InvalidInput(f"{kind}: expected a list, got {type(v).__name__}")
    return v


def _field(item: Any, kind: str, i: int, name: str, required: bool = True) -> Any:
    if not isinstance(item, dict):
        raise InvalidInput(f"{kind}[{i}]: expected a mapping")
    if name not in item:
        if required:
            raise InvalidInput(f"{kind}[{i}]: missing '{name}'")
        return None
    return item[name]


def build_state(doc: Any, current: State) -> State:
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise InvalidInput("the file must be a mapping with vpcs, subnets, security_groups, "
                           "workers and functions")
    unknown = set(doc) - set(KINDS)
    if unknown:
        raise InvalidInput(f"unknown section {sorted(unknown)[0]!r} (sections: {', '.join(KINDS)})")
    st = State()
    for i, v in enumerate(_items(doc, "vpcs")):
        f = lambda n: str(_field(v, "vpcs", i, n))  # noqa: E731
        gmac = _field(v, "vpcs", i, "gateway_mac", required=False)
        st.add_vpc(f("id"), f("cidr"), f("iface"), f("gateway"),
                   str(gmac) if gmac is not None else None)
    # VPCs that stay keep their datapath handle (flow keys use it); new ones get fresh ones
    old_idx = {v.id: v.idx for v in current.vpcs.values()}
    next_idx = max(old_idx.values(), default=0) + 1
    for vpc in st.vpcs.values():
        if vpc.id in old_idx:
            vpc.idx = old_idx[vpc.id]
        else:
            vpc.idx, next_idx = next_idx, next_idx + 1
    for i, s in enumerate(_items(doc, "subnets")):
        st.add_subnet(str(_field(s, "subnets", i, "id")), str(_field(s, "subnets", i, "vpc")),
                      str(_field(s, "subnets", i, "cidr")))
    for i, g in enumerate(_items(doc, "security_groups")):
        gid = str(_field(g, "security_groups", i, "id"))
        st.add_sg(gid, str(_field(g, "security_groups", i, "vpc")))
        for d in ("egress", "ingress"):
            for j, r in enumerate(_field(g, "security_groups", i, d, required=False) or []):
                where = f"security_groups[{i}].{d}"
                ports = _field(r, where, j, "ports", required=False)
                ports = None if ports in (None, "all") else str(ports)
                st.add_rule(gid, st.make_rule(d, str(_field(r, where, j, "proto")), ports,
                                              str(_field(r, where, j, "cidr"))))
    for i, w in enumerate(_items(doc, "workers")):
        if isinstance(w, dict):
            mac = _field(w, "workers", i, "mac", required=False)
            st.add_worker(str(_field(w, "workers", i, "ip")), str(mac) if mac else None)
        else:
            st.add_worker(str(w))
    # ENIs that still fit are offered first, so their addresses and VNIs survive
    st.enis = {e.id: e for e in current.enis.values()
               if e.subnet in st.subnets and all(g in st.sgs for g in e.sgs)}
    batch = []
    for i, fn in enumerate(_items(doc, "functions")):
        subs = _field(fn, "functions", i, "subnets")
        sgs = _field(fn, "functions", i, "security_groups")
        if not isinstance(subs, list) or not isinstance(sgs, list):
            raise InvalidInput(f"functions[{i}]: subnets and security_groups must be lists")
        workers = _field(fn, "functions", i, "workers", required=False) or []
        if not isinstance(workers, list):
            raise InvalidInput(f"functions[{i}]: workers must be a list")
        batch.append((str(_field(fn, "functions", i, "name")), [str(x) for x in subs],
                      [str(x) for x in sgs], [str(x) for x in workers]))
    seen: set[str] = set()
    for name, _, _, _ in batch:
        if name in seen:
            raise InvalidInput(f"function {name} is declared twice")
        seen.add(name)
    st.attach_many([(n, s, g) for n, s, g, _ in batch], prune=False)
    for name, _, _, workers in batch:
        try:
            st.place_function(name, workers)
        except EniplaneError as e:
            raise InvalidInput(f"function {name}: {e}") from None
    st._prune_enis()
    return st


def diff(old: State, new: State) -> list[dict[str, str]]:
    """[{op: add|change|delete, kind, id}] in a stable order."""
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
    for k in sorted(set(ea) - set(eb)):
        out.append({"op": "delete", "kind": "enis", "id": k})
    return out
