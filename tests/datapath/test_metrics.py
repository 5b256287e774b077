"""The Prometheus collector against the real maps: packets through the loaded programs, then a
scrape over HTTP (prometheus_client's own server), parsed by prometheus_client's parser and
compared with what Datapath reads; port use at exhaustion; and what a scrape costs at 64k flows.
The module has a node of its own (it fills the flow table)."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from conftest import ENV_IP, SERVER, VNI_A, VNI_TINY, env_frame, node_env, tunnel
from eniplane.metrics import DatapathCollector, counter_series


@pytest.fixture(scope="module")
def menv(lab):
    with node_env(lab, "metrics", {}) as e:
        yield e


@pytest.fixture(scope="module")
def scraper(menv):
    reg = CollectorRegistry()
    collector = DatapathCollector(menv.dp.node, scan_ttl=0)
    reg.register(collector)
    server, thread = start_http_server(0, "127.0.0.1", registry=reg)
    port = server.server_port

    def scrape() -> dict[str, dict[tuple, float]]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()
        out: dict[str, dict[tuple, float]] = {}
        for fam in text_string_to_metric_families(text.decode()):
            for s in fam.samples:
                out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
        return out

    scrape.collector = collector
    yield scrape
    server.shutdown()
    thread.join(5)


def sample_of(got: dict, counter: str) -> float:
    metric, labels = counter_series(counter)
    return got[f"eniplane_{metric}_total"][tuple(sorted(labels.items()))]


def test_a_scrape_says_what_the_maps_say(menv, scraper):
    for sport in (41000, 41001, 41002):
        verdict, _, _ = menv.run("xdp_fabric", tunnel(env_frame(TCP(sport=sport, dport=80,
                                                                     flags="S"))))
        assert verdict == "REDIRECT"
    verdict, _, _ = menv.run("xdp_fabric", tunnel(env_frame(TCP(sport=41003, dport=22,
                                                                 flags="S"))))
    assert verdict == "DROP"  # VNI_A allows no port 22: a security-group denial
    stats = menv.dp.stats()
    eni = menv.dp.eni_stats()[VNI_A]
    states = menv.dp.flow_states()
    got = scraper()
    assert got["eniplane_datapath_up"][()] == 1
    for name, value in stats.items():
        assert sample_of(got, name) == value, name
    assert sample_of(got, "drop_sg_denied") >= 1 and sample_of(got, "fwd_new_flow") >= 3
    a = (("eni", f"vni-{VNI_A}"), ("subnet", ""), ("vpc", ""))
    assert got["eniplane_eni_packets_total"][(("direction", "egress"),) + a] == eni["tx_packets"]
    assert got["eniplane_eni_bytes_total"][(("direction", "egress"),) + a] == eni["tx_bytes"]
    assert got["eniplane_eni_flows_created_total"][a] == eni["flows_created"] >= 3
    assert got["eniplane_eni_sg_denied_packets_total"][a] == eni["sg_denied"] >= 1
    assert got["eniplane_eni_flow_entries"][a] == menv.dp.eni_flow_entries()[VNI_A]
    for state, n in states.items():
        assert got["eniplane_flows"][(("state", state),)] == n
    assert got["eniplane_map_entries"][(("map", "flows"),)] == sum(states.values())


def test_port_use_reaches_one_when_a_destination_holds_the_whole_range(menv, scraper):
    # VNI_TINY's range is two ports: two flows to one destination exhaust it
    for sport in (42000, 42001):
        frame = Ether(src="02:ee:00:00:00:02", dst="02:e1:1a:00:00:01") / \
            IP(src=ENV_IP, dst=SERVER) / UDP(sport=sport, dport=53)
        assert menv.run("xdp_fabric", tunnel(frame, vni=VNI_TINY))[0] == "REDIRECT"
    got = scraper()
    tiny = (("eni", f"vni-{VNI_TINY}"), ("subnet", ""), ("vpc", ""))
    assert got["eniplane_eni_port_use_ratio"][tiny] == 1.0
    a = (("eni", f"vni-{VNI_A}"), ("subnet", ""), ("vpc", ""))
    assert 0 < got["eniplane_eni_port_use_ratio"][a] < 0.001


def fill_flows(dp, n: int) -> None:
    """n synthetic live UDP flows of VNI_A, one remote each: what a busy node's table holds."""
    m = dp.map("flows")
    eni = dp.enis()[VNI_A]
    now = dp.now_ns()
    for i in range(n):
        key = {"vpc_idx": eni["vpc_idx"], "proto": 17, "eni_addr": eni["addr"],
               "remote": f"10.1.{i >> 8 & 255}.{i & 255}", "eni_port": 1024 + i % 60000,
               "remote_port": 53}
        val = {"last_seen_ns": now, "tx_packets": 1, "tx_bytes": 100, "rx_packets": 0,
               "rx_bytes": 0, "worker": "100.64.0.11", "vni": VNI_A,
               "env_addr": ENV_IP, "env_port": 10000 + i % 50000, "eni_idx": eni["eni_idx"],
               "env_mac": "02:ee:00:00:00:02", "tunnel": 0, "state": 0}
        m.update(key, val)


def test_a_scrape_at_64k_flows(menv, scraper, capsys):
    """What a scrape costs with 64k flows, with the scan cached and without (reported, and
    bounded loosely: the machine running the tests is shared)."""
    fill_flows(menv.dp, 65536)
    t0 = time.perf_counter()
    got = scraper()
    cold = time.perf_counter() - t0
    assert got["eniplane_map_entries"][(("map", "flows"),)] >= 65536
    scraper.collector.scan_ttl = 3600
    scraper()  # the scan is taken here and cached
    t0 = time.perf_counter()
    scraper()
    warm = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\nscrape at 64k flows: {cold * 1000:.0f} ms with a table scan, "
              f"{warm * 1000:.1f} ms from the cached scan")
    assert warm < cold and warm < 0.5
