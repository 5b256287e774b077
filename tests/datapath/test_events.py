"""Datapath events (the `events` ring buffer), security-group denials (sg_denials) and the
kernel's redirect failures (the raw tracepoint programs), on a node of the test's own: its ring
buffer and counters see only this module's packets. The test pins itself to one CPU: the event
rate is a per-CPU token bucket."""

from __future__ import annotations

import os
import time

import pytest
from scapy.layers.inet import TCP, UDP

from eniplane import bpfsys, netlink, paths, ringbuf
from eniplane import events as ev_mod

from conftest import (ENI_A, ENV_IP, SERVER, VNI_A, WORKER, env_frame, node_env, tunnel)

RING_RECORD = 8 + 152  # the ring's header and struct event, rounded to 8


@pytest.fixture(scope="module")
def ev_env(lab):
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        with node_env(lab, "events", {}) as e:
            e.rb = ringbuf.open_pinned(str(paths.maps_dir(e.dp.node) / "events"))
            try:
                yield e
            finally:
                e.rb.close()
    finally:
        os.sched_setaffinity(0, cpus)


def denied(sport=33000, payload=b""):
    return tunnel(env_frame(TCP(sport=sport, dport=22, flags="S") / payload))


def events(e) -> list[dict]:
    layout, reasons = e.dp.event_layout(), e.dp.event_reasons()
    return [ev_mod.decode(r, layout, reasons) for r in e.rb.drain()]


def test_defaults_report_drops_not_flows(ev_env):
    assert ev_env.dp.events_settings() == ev_mod.DEFAULTS == {"drops": True, "flows": False,
                                                              "rate": 100}


def test_denied_flow_is_recorded_exactly(ev_env):
    e = ev_env
    e.dp.take_sg_denials()
    pkts = [bytes(denied(sport=41000, payload=b"x" * n)) for n in (0, 10, 200)]
    for p in pkts:
        verdict, _, delta = e.run("xdp_fabric", p)
        assert verdict == "DROP" and delta["drop_sg_denied"] == 1
    inner = [len(p) - 50 for p in pkts]  # the inner frame: outer Ethernet, IP, UDP, VXLAN gone
    got = e.dp.sg_denials()
    assert len(got) == 1
    d = got[0]
    assert (d["worker"], d["vni"], d["env_addr"], d["env_port"], d["remote"], d["remote_port"],
            d["proto"]) == (WORKER, VNI_A, ENV_IP, 41000, SERVER, 22, 6)
    assert (d["packets"], d["bytes"]) == (3, sum(inner))
    assert d["first_ns"] <= d["last_ns"]
    taken = e.dp.take_sg_denials()
    assert [(t["packets"], t["bytes"]) for t in taken] == [(3, sum(inner))]
    assert e.dp.sg_denials() == []  # taken: the next window starts from nothing


def test_a_drop_is_one_event_with_its_fields(ev_env):
    e = ev_env
    e.dp.set_events(drops=True, flows=False, rate=1000)
    time.sleep(1.1)  # a full bucket
    events(e)
    pkt = bytes(denied(sport=42000, payload=b"y" * 300))
    verdict, _, delta = e.run("xdp_fabric", pkt)
    assert verdict == "DROP"
    got = events(e)
    assert len(got) == 1
    ev = got[0]
    assert (ev["kind"], ev["reason"], ev["direction"]) == ("drop", "drop_sg_denied", "fabric")
    assert (ev["worker"], ev["vni"], ev["tunnel"]) == (WORKER, VNI_A, "vxlan")
    assert (ev["proto"], ev["src"], ev["sport"], ev["dst"], ev["dport"]) == \
        ("tcp", ENV_IP, 42000, SERVER, 22)
    assert ev["len"] == len(pkt)
    assert bytes.fromhex(ev["frame"]) == pkt[:128]
    assert "event_rate_limited" not in delta and "event_ring_full" not in delta


def test_drops_off_means_no_event(ev_env):
    e = ev_env
    e.dp.set_events(drops=False)
    events(e)
    e.run("xdp_fabric", bytes(denied(sport=42001)))
    assert events(e) == []
    e.dp.set_events(drops=True)


def test_new_flow_event_shows_the_translated_packet(ev_env):
    e = ev_env
    e.dp.set_events(drops=True, flows=True, rate=1000)
    time.sleep(1.1)
    events(e)
    verdict, _, _ = e.run("xdp_fabric", bytes(tunnel(env_frame(UDP(sport=43000, dport=7)))))
    assert verdict == "REDIRECT"
    got = events(e)
    assert [(g["kind"], g["reason"], g["src"], g["dst"], g["dport"]) for g in got] == \
        [("flow-start", "fwd_new_flow", ENI_A, SERVER, 7)]
    e.dp.set_events(flows=False)


def test_rate_limit_is_a_burst_then_the_rate(ev_env):
    e = ev_env
    e.dp.set_events(drops=True, rate=1)  # one a second after a burst of EVENT_BURST (50)
    time.sleep(1.1)
    events(e)
    before = e.dp.stats()
    for i in range(80):
        e.run("xdp_fabric", bytes(denied(sport=44000 + i)))
    after = e.dp.stats()
    sent = len(events(e))
    assert 50 <= sent <= 51  # the burst, and at most one token the clock added meanwhile
    assert after["event_rate_limited"] - before["event_rate_limited"] == 80 - sent


def test_a_full_ring_buffer_is_counted(ev_env):
    e = ev_env
    e.dp.set_events(drops=True, rate=0xFFFFFFFF)
    events(e)
    before = e.dp.stats()["event_ring_full"]
    pkt = bytes(denied(sport=45000))
    deadline = time.monotonic() + 10
    # the bucket holds 50 a tick whatever the rate: repeat until the ring has had no room
    with netlink.in_netns(e.netns):
        while e.dp.stats()["event_ring_full"] == before and time.monotonic() < deadline:
            bpfsys.prog_test_run(e.fds["xdp_fabric"], pkt, repeat=500)
    assert e.dp.stats()["event_ring_full"] > before
    kept = e.rb.drain()
    ring = e.rb.size
    assert ring // RING_RECORD - 1 <= len(kept) <= ring // RING_RECORD
    # room again: the next event goes through
    e.run("xdp_fabric", pkt)
    assert len(events(e)) == 1
    e.dp.set_events(rate=100)


@pytest.fixture
def dead_end(ev_env, lab):
    """VPC slot 1 sent into a veth whose peer runs no XDP program: the kernel cannot deliver
    redirected frames there (a veth receives them only while its peer runs NAPI)."""
    ns = ev_env.netns
    a, b = "evr" + lab.prefix[-4:], "evp" + lab.prefix[-4:]
    netlink.veth_add(ns, a, ns, b, 1500)
    info = netlink.link_get(ns, a)
    old = ev_env.vpc_if["vpca"]["ifindex"]
    ev_env.dp.set_tx_port(1, info["ifindex"])
    try:
        yield info["ifindex"]
    finally:
        ev_env.dp.set_tx_port(1, old)
        lab.exec(ns, ["ip", "link", "del", a])


def test_redirect_failure_is_counted_per_egress(ev_env, dead_end):
    e = ev_env
    before = e.dp.stats()["redirect_failed"]
    old = e.dp.redirect_failures().get(dead_end, 0)
    pkt = bytes(tunnel(env_frame(UDP(sport=46000, dport=7))))
    with netlink.in_netns(e.netns):
        rv, _, _ = bpfsys.prog_test_run(e.fds["xdp_fabric"], pkt, repeat=5, out_size=0,
                                        flags=bpfsys.BPF_F_TEST_XDP_LIVE_FRAMES,
                                        ingress_ifindex=e.fabric)
    assert e.dp.stats()["redirect_failed"] - before == 5
    assert e.dp.redirect_failures()[dead_end] - old == 5
