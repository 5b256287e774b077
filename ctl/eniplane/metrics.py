"""Prometheus metrics of a node's datapath, read from the pinned maps at each scrape.

Contract: `DatapathCollector(node)` is a prometheus_client custom collector (register it in a
CollectorRegistry; the agent serves that registry at /metrics). A scrape never raises: a node
whose maps are not pinned (or cannot be read) yields `eniplane_datapath_up 0` and nothing else. Names follow Prometheus
conventions: counters end in _total, base units, what varies is a label, never part of a name.

Every counter of struct stats becomes one sample, named by its prefix (`counter_series`):
xdp_* the XDP actions, rx_* packets received per side, drop_* and pass_* with the reason as a
label, fwd_*/rev_* forwarded packets by kind and direction, tx_* packets the node itself sent,
and anything else (MAC learning, probes, races, counters added later) an event by name. Per ENI
(labels eni, vpc, subnet, from the store; an ENI the store does not name is "vni-N"): packets and
bytes by direction, flows created, security-group denials, port allocation failures, flow-limit
drops, flow entries and limit, and port use: the share of the ENI's port range that its fullest
destination holds (1.0 is where drop_port_exhausted starts).

What needs the whole flow table (live flows by state, port use, map fill levels) comes from one
scan cached for `scan_ttl` seconds (default 15, a typical scrape interval): a scan of 1M flows
takes seconds. `eniplane_flow_scan_age_seconds` and `_duration_seconds` say how fresh it is.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

NS = "eniplane"
XDP_ACTIONS = ("aborted", "drop", "pass", "tx", "redirect")
# eni_stats fields -> (metric, labels, help)
ENI_COUNTERS: dict[str, tuple[str, dict[str, str], str]] = {
    "tx_packets": ("eni_packets", {"direction": "egress"}, "Packets an ENI carried"),
    "rx_packets": ("eni_packets", {"direction": "ingress"}, "Packets an ENI carried"),
    "tx_bytes": ("eni_bytes", {"direction": "egress"}, "Bytes an ENI carried"),
    "rx_bytes": ("eni_bytes", {"direction": "ingress"}, "Bytes an ENI carried"),
    "flows_created": ("eni_flows_created", {}, "Flows an ENI opened"),
    "sg_denied": ("eni_sg_denied_packets", {},
                  "Packets of new flows no security-group rule of the ENI allowed"),
    "port_alloc_failed": ("eni_port_alloc_failures", {},
                          "New flows that found no free NAT port towards their destination"),
    "flows_limited": ("eni_flow_limit_dropped_packets", {},
                      "New flows dropped because the ENI held as many flows as its limit"),
}
_HELP = {
    "xdp_actions": "Packets by the XDP action the datapath returned",
    "received_packets": "Packets the datapath's programs received, by side",
    "dropped_packets": "Packets the datapath dropped, by reason",
    "passed_packets": "Packets handed to the kernel's stack, by reason",
    "forwarded_packets": "Packets forwarded, by kind and direction",
    "sent_packets": "Packets the node itself sent (ICMP, TCP RST, ARP answers), by kind",
    "datapath_events": "Other datapath events, by name (MAC learning, probes, races)",
}


def counter_series(name: str) -> tuple[str, dict[str, str]]:
    """The metric (without namespace and _total) and labels that one stats counter is."""
    if name.startswith("xdp_") and name[4:] in XDP_ACTIONS:
        return "xdp_actions", {"action": name[4:]}
    if name in ("rx_fabric", "rx_vpc"):
        return "received_packets", {"side": name[3:]}
    for prefix, metric in (("drop_", "dropped_packets"), ("pass_", "passed_packets")):
        if name.startswith(prefix):
            return metric, {"reason": name[len(prefix):]}
    if name.startswith("fwd_"):
        return "forwarded_packets", {"kind": name[4:], "direction": "to_vpc"}
    if name.startswith("rev_"):
        return "forwarded_packets", {"kind": name[4:], "direction": "to_environment"}
    if name.startswith("tx_"):
        return "sent_packets", {"kind": name[3:]}
    return "datapath_events", {"event": name}


def stats_families(stats: dict[str, int]) -> list[CounterMetricFamily]:
    """Every stats counter as a sample of the family counter_series puts it in."""
    fams: dict[tuple[str, tuple[str, ...]], CounterMetricFamily] = {}
    for name, value in stats.items():
        metric, labels = counter_series(name)
        key = (metric, tuple(labels))
        if key not in fams:
            fams[key] = CounterMetricFamily(f"{NS}_{metric}", _HELP[metric], labels=list(labels))
        fams[key].add_metric(list(labels.values()), value)
    return list(fams.values())


def port_use(fullest: int, port_lo: int, port_hi: int) -> float:
    """The share of an ENI's NAT port range one destination's flows hold."""
    size = port_hi - port_lo + 1
    return fullest / size if size > 0 else 0.0


class DatapathCollector(Collector):
    def __init__(self, node: str, scan_ttl: float = 15.0,
                 clock: Callable[[], float] = time.monotonic):
        self.node = node
        self.scan_ttl = scan_ttl
        self.clock = clock
        self._scan: dict[str, Any] | None = None
        self._scanned_at = 0.0
        self._lock = threading.Lock()  # two scrapes at once share one scan

    def describe(self) -> Iterator[Any]:
        return iter(())  # registering must not read the maps

    def _names(self) -> dict[int, tuple[str, str, str]]:
        """VNI -> (ENI id, VPC, subnet) as the store names them."""
        from .store import Store

        try:
            st = Store.peek(self.node)
        except Exception:  # noqa: BLE001 - a node without a store is labelled by VNI
            return {}
        out = {}
        for e in st.enis.values():
            sub = st.subnets.get(e.subnet)
            out[e.vni] = (e.id, sub.vpc if sub else "", e.subnet)
        return out

    def _cached_scan(self, dp: Any) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            if self._scan is None or now - self._scanned_at >= self.scan_ttl:
                t0 = time.perf_counter()
                summary = dp.flow_summary()
                levels = dp.map_levels({"flows": summary["entries"]})
                self._scan = {**summary, "maps": levels,
                              "duration": time.perf_counter() - t0}
                self._scanned_at = now
            return {**self._scan, "age": now - self._scanned_at}

    def collect(self) -> Iterator[Any]:
        from . import paths
        from .datapath import Datapath

        up = GaugeMetricFamily(f"{NS}_datapath_up", "1 if the node's datapath is up and its "
                               "maps could be read")
        try:
            if not (paths.maps_dir(self.node) / "stats").exists():
                raise LookupError  # not pinned: nothing to read
            with Datapath(self.node) as dp:
                fams = self._families(dp)
        except Exception:  # noqa: BLE001 - a scrape reports the node down, never fails
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from fams

    def _families(self, dp: Any) -> list[Any]:
        fams: list[Any] = stats_families(dp.stats())
        c = CounterMetricFamily(f"{NS}_flows_evicted", "Flows the flow table's LRU evicted")
        c.add_metric([], dp.flows_evicted())
        s = CounterMetricFamily(f"{NS}_flows_swept", "Expired flows the sweeper removed")
        s.add_metric([], dp.flows_swept())
        fams += [c, s]
        reaped = dp.reap_stats()
        if reaped:  # a node without the kernel reaper has none
            r = CounterMetricFamily(f"{NS}_flows_reaped", "What the kernel reaper did with the "
                                    "entries sweeps and flushes chose", labels=["outcome"])
            for name, value in reaped.items():
                r.add_metric([name.removeprefix("reap_")], value)
            fams.append(r)

        names = self._names()
        enis = dp.enis()
        labels = ["eni", "vpc", "subnet"]

        def eni_labels(vni: int) -> list[str]:
            return list(names.get(vni, (f"vni-{vni}", "", "")))

        by_metric: dict[tuple[str, tuple[str, ...]], CounterMetricFamily] = {}
        for vni, counters in sorted(dp.eni_stats().items()):
            for field, value in counters.items():
                metric, extra, doc = ENI_COUNTERS.get(
                    field, (f"eni_{field}", {}, f"Per-ENI counter {field}"))
                key = (metric, tuple(extra))
                if key not in by_metric:
                    by_metric[key] = CounterMetricFamily(f"{NS}_{metric}", doc,
                                                         labels=labels + list(extra))
                by_metric[key].add_metric(eni_labels(vni) + list(extra.values()), value)
        fams += list(by_metric.values())

        entries = dp.eni_flow_entries()
        default_limit = dp.flow_limit()
        held = GaugeMetricFamily(f"{NS}_eni_flow_entries",
                                 "Flow entries an ENI holds against its limit", labels=labels)
        limit = GaugeMetricFamily(f"{NS}_eni_flow_limit", "An ENI's flow limit", labels=labels)
        use = GaugeMetricFamily(f"{NS}_eni_port_use_ratio",
                                "Share of the ENI's NAT port range that its fullest destination "
                                "(remote, port, protocol) holds; 1 is port exhaustion",
                                labels=labels)
        scan = self._cached_scan(dp)
        for vni, e in sorted(enis.items()):
            held.add_metric(eni_labels(vni), entries.get(vni, 0))
            limit.add_metric(eni_labels(vni), e["max_flows"] or default_limit)
            use.add_metric(eni_labels(vni), port_use(scan["fullest_destination"].get(vni, 0),
                                                     e["port_lo"], e["port_hi"]))
        fams += [held, limit, use]

        states = GaugeMetricFamily(f"{NS}_flows", "Flow entries by state (live ones by their "
                                   "state, kept ones that are no longer live as expired)",
                                   labels=["state"])
        for state, n in scan["states"].items():
            states.add_metric([state], n)
        short = GaugeMetricFamily(f"{NS}_flows_short_way", "Live flows whose next established "
                                  "packet may take their flow_hot slot (docs/architecture.md, "
                                  "\"The short way\"); the rest go through the flow table")
        short.add_metric([], scan["short_way"])
        m_entries = GaugeMetricFamily(f"{NS}_map_entries", "Entries in a pinned map",
                                      labels=["map"])
        m_max = GaugeMetricFamily(f"{NS}_map_max_entries", "A pinned map's capacity",
                                  labels=["map"])
        m_fill = GaugeMetricFamily(f"{NS}_map_fill_ratio", "Entries over capacity",
                                   labels=["map"])
        for m in scan["maps"]:
            m_entries.add_metric([m["name"]], m["entries"])
            m_max.add_metric([m["name"]], m["max_entries"])
            m_fill.add_metric([m["name"]], m["entries"] / m["max_entries"]
                              if m["max_entries"] else 0.0)
        age = GaugeMetricFamily(f"{NS}_flow_scan_age_seconds",
                                "Age of the flow-table scan behind the flow, port-use and map "
                                "metrics")
        age.add_metric([], scan["age"])
        took = GaugeMetricFamily(f"{NS}_flow_scan_duration_seconds",
                                 "How long the last flow-table scan took")
        took.add_metric([], scan["duration"])
        return fams + [states, short, m_entries, m_max, m_fill, age, took]
