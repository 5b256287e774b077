"""The metrics' names and the collector's families (metrics.py), without a datapath: every
counter of bpf/stats.h lands in exactly one sample, names follow Prometheus conventions, the
exposition parses with prometheus_client's own parser, and the flow scan is cached."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eniplane.metrics import DatapathCollector, counter_series, port_use, stats_families

STATS_H = Path(__file__).resolve().parents[2] / "bpf" / "stats.h"


def stat_names() -> list[str]:
    text = STATS_H.read_text().split("#define ENIPLANE_STAT_ENUM")[0]
    return re.findall(r"\bX\((\w+)\)", text)


def test_every_stats_counter_is_one_distinct_series():
    names = stat_names()
    assert len(names) > 60
    series = [(m, tuple(sorted(l.items()))) for m, l in map(counter_series, names)]
    assert len(set(series)) == len(series)
    assert counter_series("drop_sg_denied") == ("dropped_packets", {"reason": "sg_denied"})
    assert counter_series("xdp_redirect") == ("xdp_actions", {"action": "redirect"})
    assert counter_series("rev_established") == ("forwarded_packets",
                                                 {"kind": "established",
                                                  "direction": "to_environment"})
    assert counter_series("redirect_failed") == ("datapath_events", {"event": "redirect_failed"})


def parse(text: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


class FakeDp:
    def __init__(self):
        self.scans = 0
        self.counters = {n: i for i, n in enumerate(stat_names())}

    def stats(self):
        return dict(self.counters)

    def flows_evicted(self):
        return 5

    def flows_swept(self):
        return 6

    def reap_stats(self):
        return {"reap_removed_sweep": 7, "reap_removed_flush": 0, "reap_kept_changed": 1, "reap_kept_live": 0,
                "reap_gone": 0}

    def enis(self):
        return {4096: {"port_lo": 1024, "port_hi": 2047, "max_flows": 0},
                4097: {"port_lo": 2000, "port_hi": 2001, "max_flows": 10}}

    def eni_stats(self):
        f = ["tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "flows_created", "sg_denied",
             "port_alloc_failed", "flows_limited"]
        return {4096: {k: i + 1 for i, k in enumerate(f)}, 4097: {k: 0 for k in f}}

    def eni_flow_entries(self):
        return {4096: 3, 4097: 2}

    def flow_limit(self):
        return 65536

    def flow_summary(self):
        self.scans += 1
        return {"entries": 5, "states": {"established": 3, "expired": 2},
                "fullest_destination": {4096: 256, 4097: 2}, "short_way": 2}

    def map_levels(self, known):
        return [{"name": "flows", "entries": known["flows"], "max_entries": 100},
                {"name": "stats", "entries": 1, "max_entries": 1}]


class Registered(DatapathCollector):
    def __init__(self, dp, **kw):
        super().__init__("unit", **kw)
        self.dp = dp

    def collect(self):
        yield from self._families(self.dp)

    def _names(self):
        return {4096: ("eni-a", "vpc-a", "sub-a")}


def scrape(collector) -> dict:
    reg = CollectorRegistry()
    reg.register(collector)
    return parse(generate_latest(reg).decode())


def test_the_exposition_parses_and_says_what_the_datapath_says():
    dp = FakeDp()
    got = scrape(Registered(dp))
    dropped = got["eniplane_dropped_packets_total"]
    assert dropped[(("reason", "sg_denied"),)] == dp.counters["drop_sg_denied"]
    assert got["eniplane_xdp_actions_total"][(("action", "pass"),)] == dp.counters["xdp_pass"]
    assert got["eniplane_flows_evicted_total"][()] == 5
    assert got["eniplane_flows_reaped_total"][(("outcome", "kept_changed"),)] == 1
    assert got["eniplane_flows_reaped_total"][(("outcome", "removed_sweep"),)] == 7
    assert got["eniplane_flows_short_way"][()] == 2
    a = (("eni", "eni-a"), ("subnet", "sub-a"), ("vpc", "vpc-a"))
    assert got["eniplane_eni_packets_total"][(("direction", "egress"),) + a] == 1
    assert got["eniplane_eni_bytes_total"][(("direction", "ingress"),) + a] == 4
    assert got["eniplane_eni_sg_denied_packets_total"][a] == 6
    assert got["eniplane_eni_flow_limit"][a] == 65536
    assert got["eniplane_eni_port_use_ratio"][a] == 256 / 1024
    b = (("eni", "vni-4097"), ("subnet", ""), ("vpc", ""))
    assert got["eniplane_eni_port_use_ratio"][b] == 1.0
    assert got["eniplane_eni_flow_limit"][b] == 10
    assert got["eniplane_flows"][(("state", "expired"),)] == 2
    assert got["eniplane_map_fill_ratio"][(("map", "flows"),)] == 0.05
    # every counter of stats.h is in the scrape once
    n = sum(len(v) for k, v in got.items() if k in {
        f"eniplane_{m}_total" for m in ("xdp_actions", "received_packets", "dropped_packets",
                                        "passed_packets", "forwarded_packets", "sent_packets",
                                        "datapath_events")})
    assert n == len(stat_names())
    for name in got:  # conventions: counters end in _total, no unit-less "count" names
        assert name.startswith("eniplane_") and not name.endswith("_count")


def test_the_flow_scan_is_cached_for_its_ttl():
    now = [100.0]
    dp = FakeDp()
    c = Registered(dp, scan_ttl=15, clock=lambda: now[0])
    scrape(c)
    now[0] += 10
    got = scrape(c)
    assert dp.scans == 1 and got["eniplane_flow_scan_age_seconds"][()] == 10
    now[0] += 6
    scrape(c)
    assert dp.scans == 2


def test_a_node_that_is_not_up_is_reported_down_not_failed():
    got = scrape(DatapathCollector("nosuchnode"))
    assert got == {"eniplane_datapath_up": {(): 0.0}}


def test_port_use():
    assert port_use(64512, 1024, 65535) == 1.0
    assert port_use(0, 5, 4) == 0.0


def test_registering_reads_nothing():
    # the registry calls describe() at register(): an empty one makes it collect lazily, at
    # scrapes only, instead of reading the maps then
    assert list(DatapathCollector("nosuchnode").describe()) == []
