"""Make the maps say what the store says.

Contract: `reconcile(node, state)` programs every map of a running node from a State: the flow
lifecycle settings (idle timeouts, flows per ENI), the IPv4 settings (MSS clamping, ICMP rate,
tunnel gateway), the fabric interface's MTU and the VPC interfaces' (read again each time), workers,
VPC attachments (xdp_vpc on their interfaces, gateway MACs resolved by ARP), ENIs with their flow limits and compiled security groups; what the state no longer has is
removed, an ENI's flows with it. It is idempotent, so
`eniplane sync` after a reboot, a reload or a crash brings the datapath back to exactly the
stored state. A function's attach, detach or placement touches only ENIs, their rules and
placements, so `change(..., scope="functions")` reconciles only those (no interface is read
again): what keeps a scheduler's calls in milliseconds. `change()` runs one mutation under a store transaction and reconciles
before committing: when either fails, the store is rolled back and the maps re-synced to it.
Both `change()` and `sync()` hold the node lock (lock.py) throughout, the failure path included:
a re-sync to the committed store is only right while no other command can be between its own
reconcile and commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, TypeVar

from . import lock
from . import node as nodemod
from .errors import EniplaneError
from .loader import PROG_VPC
from .model import State
from .store import Store

T = TypeVar("T")


@dataclass
class Report:
    node_up: bool = True
    changed: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def bump(self, what: str, n: int = 1) -> None:
        if n:
            self.changed[what] = self.changed.get(what, 0) + n


def reconcile(node: str, st: State, resolve_timeout: float = 1.0,
              scope: str = "all") -> Report:
    """scope "functions": only what attaching, detaching and placing functions can change (ENIs,
    their rules, placements); "all": everything, interfaces read again included."""
    from .datapath import Datapath

    rep = Report()
    rec = nodemod.NodeRecord.load(node)
    with Datapath(node, rec.netns) as dp:
        if scope != "functions":
            _node_wide(node, st, dp, rec, rep, resolve_timeout)
        _enis(st, dp, rep)
    return rep


def _node_wide(node: str, st: State, dp, rec, rep: Report, resolve_timeout: float) -> None:
    """Settings, MTUs, workers and VPCs."""
    from . import arp

    # first: a shorter timeout or a lower limit holds before anything else changes
    if dp.timeouts() != st.timeouts:
        dp.set_timeouts(**st.timeouts)
        rep.bump("timeouts programmed")
    if dp.flow_limit() != st.flows_per_eni:
        dp.set_flow_limit(st.flows_per_eni)
        rep.bump("flow limits programmed")
    if dp.ipv4_settings() != st.ipv4:
        dp.set_ipv4(**st.ipv4)
        rep.bump("IPv4 settings programmed")
    if dp.events_settings() != st.events:
        dp.set_events(**st.events)
        rep.bump("events settings programmed")
    mtu = nodemod.fabric_mtu(node)  # an operator may have changed it since `up`
    if mtu and dp.fabric_mtu() != mtu:
        dp.set_fabric_mtu(mtu)
        rep.bump("fabric MTU programmed")
    have = dp.workers()
    for w in sorted(st.workers):
        static = st.worker_macs.get(w)
        old = have.get(w)
        if old is None or not _static_as_stored(old, static):
            dp.add_worker(w, static)
            rep.bump("workers added" if old is None else "workers programmed")
    gone = set(have) - st.workers
    dp.del_workers(gone)
    rep.bump("workers removed", len(gone))

    ifindex_of: dict[str, int] = {}
    vpcs_map = dp.vpcs()
    for v in st.vpcs.values():
        info = nodemod.attach_vpc_if(node, v.iface)
        ifindex_of[v.id] = info["ifindex"]
        old = vpcs_map.get(v.idx)
        if (not old or old["ifindex"] != info["ifindex"] or old["gateway_ip"] != v.gateway
                or old["tx_slot"] != info["slot"] or old["if_mac"] != info["mac"]
                or old["mtu"] != (info["mtu"] or 0)
                or not _static_as_stored(dp.gateway(v.idx), v.gateway_mac)):
            dp.set_vpc(info["ifindex"], v.idx, v.gateway, info["mac"], info["slot"],
                       gateway_mac=v.gateway_mac, mtu=info["mtu"] or 0)
            rep.bump("VPCs programmed")
        if dp.gateway(v.idx)["mac"] is None:
            try:
                arp.resolve_gateway(dp, rec.netns, v.iface, v.idx, info["mac"], v.gateway,
                                    timeout=resolve_timeout)
            except EniplaneError as e:
                rep.warnings.append(f"VPC {v.id}: {e}; packets wait for it "
                                    f"(drop_no_gateway_mac)")
    wanted_ifs = {v.iface for v in st.vpcs.values()}
    for ifname, entry in list(rec.interfaces.items()):
        if entry["program"] == PROG_VPC and ifname not in wanted_ifs:
            nodemod.detach_vpc_if(node, ifname)
            rep.bump("VPC interfaces detached")
    for idx in set(vpcs_map) - {v.idx for v in st.vpcs.values()}:
        dp.del_vpc(idx)


def _enis(st: State, dp, rep: Report) -> None:
    """ENIs, their security-group rules, and where functions are placed."""
    enis_map = dp.enis()
    wanted_vnis = set()
    for e in st.enis.values():
        v = st.vpcs[st.subnets[e.subnet].vpc]
        wanted_vnis.add(e.vni)
        want = {"eni_idx": e.idx, "vpc_idx": v.idx, "addr": e.address, "port_lo": e.port_lo,
                "port_hi": e.port_hi, "max_flows": e.max_flows}
        if enis_map.get(e.vni) != want:
            dp.set_eni(e.vni, e.idx, v.idx, e.address, e.port_lo, e.port_hi,
                       max_flows=e.max_flows)
            rep.bump("ENIs programmed")
    dp.del_enis(set(enis_map) - wanted_vnis)
    rep.bump("ENIs removed", len(set(enis_map) - wanted_vnis))
    dp.sync_sg_rules({e.vni: st.eni_rules(e) for e in st.enis.values()})
    placed, unplaced = dp.sync_placements(st.placements())
    rep.bump("placements programmed", placed)
    rep.bump("placements removed", unplaced)


def _static_as_stored(live: dict | None, static: str | None) -> bool:
    """Does a MAC the datapath holds (dp.workers() / dp.gateway() entry) agree with the store:
    set statically to `static`, or not static at all when the store has none?"""
    is_static = live is not None and live["mac_source"] == "static"
    return (is_static and live["mac"] == static) if static else not is_static


def change(node: str, mutate: Callable[[State], T], scope: str = "all") -> tuple[T, Report]:
    """Validate and apply one change to the store and, when the node is up, to the maps (only
    the part `scope` names: see reconcile; the failure path re-syncs everything)."""
    with lock.held(node), Store(node) as store:
        up = nodemod.is_up(node)
        try:
            with store.transaction() as st:
                result = mutate(st)
                rep = reconcile(node, st, scope=scope) if up else Report(node_up=False)
        except BaseException:
            if up:
                try:
                    reconcile(node, store.load())
                except EniplaneError:
                    pass  # the original error is the one to report
            raise
    return result, rep


def sync(node: str) -> Report:
    with lock.held(node), Store(node) as store:
        return reconcile(node, store.load())
