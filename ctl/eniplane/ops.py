"""What the CLI and the agent's API both do: one implementation behind both.

Contract: each function takes a node name and plain arguments, validates through the State's own
operations and runs a mutation through reconcile.change (one store transaction, reconciled before
it commits), so a request to the API is checked, stored and programmed exactly as the same CLI
command; it returns plain data (JSON types) and, for a mutation, the reconcile Report (warnings,
whether the node was up). Errors are the EniplaneError family, with the message text the CLI
prints; the CLI and the API only render them.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from . import node as nodemod
from . import nodeparams
from .reconcile import Report, change
from .store import Store


def state(node: str):
    """The stored desired state, read only (creates nothing)."""
    return Store.peek(node)


def up(node: str, fabric_if: str, fabric_ip: str, netns: Optional[str] = None,
       mode: str = "auto", max_flows: Optional[int] = None):
    """Load and attach the datapath, keep these parameters in the store (what the agent brings
    the node up with after a reboot), and program it from the store. Returns (NodeRecord,
    Report)."""
    from . import lock
    from .loader import DEFAULT_MAX_FLOWS
    from .reconcile import sync

    max_flows = DEFAULT_MAX_FLOWS if max_flows is None else max_flows
    params = nodeparams.check_params({"fabric_if": fabric_if, "fabric_ip": fabric_ip,
                                      "netns": netns, "mode": mode, "max_flows": max_flows})
    with lock.held(node):
        st = state(node)  # its node-wide settings hold from the first packet; sync does the rest
        rec = nodemod.up(node, fabric_if, fabric_ip, netns, mode,
                         defines={"MAX_FLOWS": max_flows}, timeouts=st.timeouts,
                         flows_per_eni=st.flows_per_eni, ipv4=st.ipv4)
        with Store(node) as store, store.transaction() as st:
            st.set_node(**params)
        return rec, sync(node)


# ---- documents --------------------------------------------------------------------------------
def eni_doc(e) -> dict:
    return {"id": e.id, "subnet": e.subnet, "address": e.address, "vni": e.vni,
            "security_groups": list(e.sgs), "port_range": [e.port_lo, e.port_hi]}


def flow_doc(f: dict, eni_ids: dict[int, str]) -> dict:
    from .sgcompile import PROTO_NAMES

    proto = PROTO_NAMES.get(f["proto"], str(f["proto"]))
    return {"eni": eni_ids.get(f["vni"]), "vni": f["vni"], "proto": proto, "worker": f["worker"],
            "env": f"{f['env_addr']}:{f['env_port']}",
            "remote": f"{f['remote']}:{f['remote_port']}",
            "nat": f"{f['eni_addr']}:{f['nat_port']}", "packets_out": f["tx_packets"],
            "bytes_out": f["tx_bytes"], "packets_in": f["rx_packets"], "bytes_in": f["rx_bytes"],
            "state": f["state"], "state_bits": f["state_bits"], "idle_s": f["idle_s"],
            "live": f["live"], "last_seen_ns": f["last_seen_ns"]}


# ---- functions --------------------------------------------------------------------------------
def attach_function(node: str, name: str, subnets: list[str], sgs: list[str],
                    workers: Iterable[str] = ()) -> tuple[dict, Report]:
    """Per subnet, the shared ENI of (subnet, groups), created if needed; placed on workers."""
    workers = list(workers)

    def attach(st):
        enis = st.attach_function(name, subnets, sgs)
        st.place_function(name, workers)
        return enis

    enis, rep = change(node, attach, scope="functions")
    return {"function": name, "enis": [eni_doc(e) for e in enis], "workers": workers}, rep


def detach_function(node: str, name: str) -> tuple[dict, Report]:
    _, rep = change(node, lambda st: st.detach_function(name), scope="functions")
    return {"function": name}, rep


def place_function(node: str, name: str, workers: list[str]) -> tuple[dict, Report]:
    placed, rep = change(node, lambda st: st.place_function(name, workers),
                         scope="functions")
    return {"function": name, "workers": list(placed)}, rep


def unplace_function(node: str, name: str, workers: list[str]) -> tuple[dict, Report]:
    placed, rep = change(node, lambda st: st.unplace_function(name, workers),
                         scope="functions")
    return {"function": name, "workers": list(placed)}, rep


def list_functions(node: str) -> list[dict]:
    st = state(node)
    return [{"name": f.name, "subnets": f.subnets, "security_groups": f.sgs,
             "workers": f.workers, "enis": [eni_doc(e) for e in st.function_enis(f.name)]}
            for f in sorted(st.functions.values(), key=lambda f: f.name)]


# ---- ENIs -------------------------------------------------------------------------------------
def _eni_flow_entries(node: str) -> Optional[dict[int, int]]:
    """Flow entries per VNI, as the per-ENI limit counts them; None when the node is not up."""
    if not nodemod.is_up(node):
        return None
    from .datapath import Datapath

    with Datapath(node) as dp:
        return dp.eni_flow_entries()


def eni_limits_doc(st, e, entries: Optional[dict[int, int]]) -> dict:
    return {"max_flows": e.max_flows, "flow_limit": st.eni_flow_limit(e),
            "flow_entries": None if entries is None else entries.get(e.vni, 0)}


def list_enis(node: str) -> list[dict]:
    """Shared ENIs, the functions each serves, and its flow entries against its limit."""
    st = state(node)
    users = st.eni_users()
    entries = _eni_flow_entries(node)
    return [{**eni_doc(e), "functions": users[e.id], **eni_limits_doc(st, e, entries)}
            for e in sorted(st.enis.values(), key=lambda e: e.vni)]


# ---- flows and counters -----------------------------------------------------------------------
def flow_vnis(st, eni: Optional[str], vpc: Optional[str]) -> Optional[set[int]]:
    """The VNIs that an ENI and a VPC filter select (None: no filter)."""
    vnis = None
    if eni:
        vnis = {st.eni(eni).vni}
    if vpc:
        st.vpc(vpc)
        in_vpc = {e.vni for e in st.enis.values() if st.subnets[e.subnet].vpc == vpc}
        vnis = in_vpc if vnis is None else vnis & in_vpc
    return vnis


def list_flows(node: str, eni: Optional[str] = None, vpc: Optional[str] = None,
               limit: int = 100, include_expired: bool = False) -> list[dict]:
    from .datapath import Datapath

    st = state(node)
    vnis = flow_vnis(st, eni, vpc)
    eni_ids = {e.vni: e.id for e in st.enis.values()}
    rows: list[dict] = []
    if limit <= 0:
        return rows
    with Datapath(node) as dp:
        for f in dp.flows(include_expired=include_expired):
            if vnis is not None and f["vni"] not in vnis:
                continue
            rows.append(flow_doc(f, eni_ids))
            if len(rows) >= limit:
                break
    return rows


def stats(node: str, eni: Optional[str] = None, nonzero: bool = False) -> dict:
    """Every datapath counter and live flows by state, or one ENI's counters."""
    from .datapath import Datapath

    if eni:
        e = state(node).eni(eni)
        with Datapath(node) as dp:
            counters = dp.eni_stats(e.vni).get(e.vni) or {
                k: 0 for k in dp.eni_counter_names()}  # not programmed yet
        data = {"node": node, "eni": eni, "vni": e.vni, "counters": counters}
    else:
        with Datapath(node) as dp:
            counters = {**dp.stats(), "flows_evicted": dp.flows_evicted(),
                        "flows_swept": dp.flows_swept(), **dp.reap_stats()}
            states = dp.flow_states()
        data = {"node": node, "counters": counters, "flow_states": states}
    if nonzero:  # for scripts as for people: -o json lists the same counters as the table
        data["counters"] = {k: v for k, v in data["counters"].items() if v}
    return data


def settings(node: str) -> dict:
    """The node-wide settings as stored: timeouts, limits, IPv4, and the `up` parameters."""
    st = state(node)
    return {"timeouts": dict(st.timeouts), "limits": {"flows_per_eni": st.flows_per_eni},
            "ipv4": dict(st.ipv4), "node": dict(st.node) or None}
