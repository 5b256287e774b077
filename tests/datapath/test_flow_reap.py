"""The kernel reaper (eniplane.c: xdp_flow_reap), which sweeps and flushes remove `flows` entries
through: an entry goes only when it is as user space read it and, for a sweep, still not live by
its own time or its flow_hot slot's; it is claimed with the takeovers' compare-and-swap before it
is copied out and deleted, and nothing is ever put back.

Time is moved with a test build's clock_shift map, as in test_flow_lifecycle.py."""

from __future__ import annotations

import threading
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from conftest import (ENV_IP, GW_A, ORDERS, SERVER, VNI_A, VNI_TINY, WORKER, env_frame, node_env,
                      tunnel)
from eniplane import bpfsys, lifecycle, lock, paths
from eniplane.datapath import (REAP_CHANGED, REAP_GONE, REAP_LIVE, REAP_LOCK, REAP_REMOVED,
                               REAPER, Datapath)
from eniplane.sgcompile import Rule

S = lifecycle.NSEC_PER_SEC
GRACE = lifecycle.TAKEOVER_GRACE_NS
DEST = "10.0.0.20"  # VNI_TINY's destination: its two ports (2000, 2001) fill at once


@pytest.fixture(scope="module", params=list(ORDERS))
def reaping(lab, request):
    with node_env(lab, f"reap-{request.param}",
                  {"ENIPLANE_TEST_HOOKS": 1, **ORDERS[request.param]}) as e:
        yield e


@pytest.fixture
def env(reaping):
    """A clean table, the default timeouts, the clock where it is, no hook."""
    dp = reaping.dp
    dp._reap_hook = None
    dp.flush_flows()
    dp.set_timeouts(**lifecycle.DEFAULT_TIMEOUTS)
    dp.set_flow_limit(lifecycle.DEFAULT_FLOWS_PER_ENI)
    dp.set_eni(VNI_A, 1, 1, "10.0.1.4", 1024, 65535)
    dp.set_eni(VNI_TINY, 3, 1, "10.0.2.4", 2000, 2001)
    dp.set_sg_rules(VNI_A, [Rule.of("udp", f"{SERVER}/32", (7, 7))])
    dp.set_sg_rules(VNI_TINY, [Rule.of("all", "10.0.0.0/16")])
    assert dp.has_reaper()
    yield reaping
    dp._reap_hook = None


def advance(env, ns: int) -> None:
    m = env.dp.map("clock_shift")
    m.update(0, m.lookup(0) + int(ns))


def udp(env, sport: int):
    return env.run("xdp_fabric", bytes(tunnel(env_frame(UDP(sport=sport, dport=7) / Raw(b"r")))))


def tcp_tiny(env, sport: int, flags: str):
    return env.run("xdp_fabric", bytes(tunnel(env_frame(TCP(sport=sport, dport=80, flags=flags),
                                                        dst=DEST), vni=VNI_TINY)))


def reply(env, out_fwd: bytes, flags: str):
    p = Ether(out_fwd)
    r = (Ether(src=GW_A, dst=p[Ether].src) / IP(src=p[IP].dst, dst=p[IP].src) /
         TCP(sport=p[TCP].dport, dport=p[TCP].sport, flags=flags))
    ifname = next(n for n in env.vpc_if if n.endswith("vpca"))
    return env.run("xdp_vpc", bytes(r), ifname)


def entry(env, sport: int, dport: int = 7, vni: int = VNI_A, dst: str = SERVER,
          proto: int = 17) -> tuple[bytes, dict, dict]:
    """(raw key, key, the entry's own value: no slot's share) of one environment flow."""
    f = env.dp.find_flow(WORKER, vni, ENV_IP, sport, dst, dport, proto)
    assert f is not None, "no flow"
    m = env.dp.map("flows")
    key = {"vpc_idx": f["vpc_idx"], "proto": proto, "eni_addr": f["eni_addr"], "remote": dst,
           "eni_port": f["nat_port"], "remote_port": dport}
    raw = m._key(key)
    return raw, key, m.decode_value(m.lookup_raw(raw))


def reap_counts(env) -> dict:
    return {k.removeprefix("reap_"): v for k, v in env.dp.reap_stats().items()}


# ---- one entry, every outcome -----------------------------------------------------------------
def _expired(env, sport):
    udp(env, sport)
    advance(env, 351 * S)


def _moved_on(env, sport):  # read, then a packet of its own: the time read is no longer its
    udp(env, sport)
    advance(env, 351 * S)
    raw, _, v = entry(env, sport)
    udp(env, sport)  # reopens it in place (a new time)
    return v["last_seen_ns"]


def _mid_takeover(env, sport):  # read, then claimed (time 0) by a takeover that is not done
    udp(env, sport)
    advance(env, 351 * S)
    raw, _, v = entry(env, sport)
    env.dp.map("flows").update(raw, {**v, "last_seen_ns": 0})
    return v["last_seen_ns"]


def _live(env, sport):
    udp(env, sport)
    advance(env, 10 * S)


def _live_by_its_slot(env, sport):  # its entry's own time is past the timeout, its slot's is not
    udp(env, sport)
    advance(env, 300 * S)
    assert udp(env, sport)[2].get("fwd_established") == 1  # the short way: the slot's time
    advance(env, 100 * S)


ROWS = [  # (setup, flush, result, the reap_stats counter that moves, the entry stays)
    pytest.param(_expired, False, REAP_REMOVED, "removed_sweep", False, id="expired-swept"),
    pytest.param(_moved_on, False, REAP_CHANGED, "kept_changed", True, id="time-moved-kept"),
    pytest.param(_mid_takeover, False, REAP_CHANGED, "kept_changed", True, id="claimed-0-kept"),
    pytest.param(_mid_takeover, True, REAP_CHANGED, "kept_changed", True,
                 id="claimed-0-kept-by-flush-too"),
    pytest.param(_live, False, REAP_LIVE, "kept_live", True, id="live-kept-by-sweep"),
    pytest.param(_live_by_its_slot, False, REAP_LIVE, "kept_live", True,
                 id="live-by-slot-kept-by-sweep"),
    pytest.param(_live, True, REAP_REMOVED, "removed_flush", False, id="live-flushed"),
]


@pytest.mark.parametrize("setup, flush, result, counter, stays", ROWS)
def test_the_reaper_decides_each_entry(env, setup, flush, result, counter, stays):
    sport = 48000
    seen_read = setup(env, sport)
    raw, key, v = entry(env, sport)
    seen = v["last_seen_ns"] if seen_read is None else seen_read
    before = reap_counts(env)
    ((got, value),) = env.dp._reap([(raw, seen)], flush=flush)
    after = reap_counts(env)
    assert got == result
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {counter: 1}
    left = env.dp.map("flows").lookup_raw(raw)
    assert (left is not None) == stays
    if stays:
        assert env.dp.map("flows").decode_value(left) == v  # untouched
        if not v["last_seen_ns"]:  # the takeover that claimed it is "done": the next flush goes
            env.dp.map("flows").update(raw, {**v, "last_seen_ns": seen})
    else:  # the entry as it went, its own time as read
        assert env.dp.map("flows").decode_value(value) == {**v, "last_seen_ns": seen}


def test_an_entry_that_is_gone_is_reported_gone(env):
    udp(env, 48010)
    raw, _, v = entry(env, 48010)
    assert env.dp.map("flows").delete(raw)
    before = reap_counts(env)["gone"]
    assert [r for r, _ in env.dp._reap([(raw, v["last_seen_ns"])], flush=True)] == [REAP_GONE]
    assert reap_counts(env)["gone"] == before + 1


def test_a_full_batch_and_a_sweep_of_several(env):
    """More entries than one batch holds: each decided on its own, in order."""
    n = env.dp._reap_layout()["count"] + 7
    for sport in range(49000, 49000 + n):
        udp(env, sport)
    advance(env, 200 * S)
    keep = range(49000, 49000 + n, 5)
    for sport in keep:  # these moved on
        udp(env, sport)
    advance(env, 200 * S)  # the rest are 400 s idle, those 200 s
    removed: list[dict] = []
    rep = env.dp.sweep(removed=removed)
    assert rep["reaper"] == "kernel"
    assert (rep["scanned"], rep["removed"], rep["kept"], rep["gone"]) == (n, n - len(keep), 0, 0)
    assert sorted(f["env_port"] for f in removed) == sorted(set(range(49000, 49000 + n)) -
                                                            set(keep))
    assert all(f["tx_packets"] == 1 and f["state"] == "active" for f in removed)
    assert sorted(f["env_port"] for f in env.dp.flows()) == list(keep)
    for sport in keep:  # each is still found by its probe
        assert udp(env, sport)[2].get("fwd_established") == 1


# ---- the race: a takeover between the sweep's read and its reap --------------------------------
@pytest.mark.parametrize("reaper", ["kernel", "user space"])
def test_a_connection_that_takes_an_entry_over_during_a_sweep_is_never_reset(env, reaper,
                                                                              monkeypatch):
    """The sweep reads both of VNI_TINY's expired entries; before it removes them, a new
    connection's SYN takes one of them over and is answered. Its final ACK, sent while the sweep
    removes entries, must find its flow: forwarded, never answered with a RST. The user-space
    path (a node that was not upgraded) pops the entry and puts it back, and a packet in between
    finds nothing: that is the reset this reaper exists to prevent, shown here."""
    for sport in (48100, 48101):
        tcp_tiny(env, sport, "S")  # both ports, SYN only: transitory
    advance(env, 240 * S + 2 * GRACE)  # claimable by another tuple
    newcomer = 48102
    seen: list[tuple] = []
    syn_out: list[bytes] = []

    def between(stage: str, entries: list) -> None:
        if stage == "chosen":
            assert len(entries) == 2
            got, out, d = tcp_tiny(env, newcomer, "S")
            assert (got, d.get("flow_takeover")) == ("REDIRECT", 1), d
            assert reply(env, out, "SA")[0] == "REDIRECT"
            syn_out.append(out)
        else:  # entries are out, nothing put back yet
            got, _, d = tcp_tiny(env, newcomer, "A")
            seen.append((got, d.get("tx_tcp_rst", 0), d.get("fwd_established", 0)))

    if reaper == "user space":
        monkeypatch.setattr(Datapath, "has_reaper", lambda self: False)
    env.dp._reap_hook = between
    rep = env.dp.sweep()
    env.dp._reap_hook = None
    assert rep["reaper"] == reaper and rep["removed"] == 1 and rep["kept"] == 1, rep
    if reaper == "user space":
        assert ("TX", 1, 0) in seen, seen  # the known hazard of the old path
        return
    assert seen == [("REDIRECT", 0, 1)], seen
    f = env.dp.find_flow(WORKER, VNI_TINY, ENV_IP, newcomer, DEST, 80, 6)
    assert f is not None and f["live"] and f["state"] == "established", f
    got, _, d = tcp_tiny(env, newcomer, "PA")
    assert (got, d.get("tx_tcp_rst", 0), d.get("fwd_established")) == ("REDIRECT", 0, 1), d


# ---- the node's lock on the batch map, and a node without the reaper --------------------------
def test_one_sweeper_at_a_time_uses_the_batch(env):
    """Another sweeper holding the reap lock makes this one wait for it, not write over its
    batch nor the flow guard; two sweeps at once remove each entry exactly once, and the guard
    they leave is the one a single sweep leaves."""
    for sport in range(49500, 49500 + 300):
        udp(env, sport)
    advance(env, 351 * S)
    done: list[dict] = []
    with lock.exclusive(env.dp.node, REAP_LOCK):
        t = threading.Thread(target=lambda: done.append(env.dp.sweep()))
        t.start()
        time.sleep(0.3)
        assert t.is_alive() and not done  # waiting for the batch map
    t.join(30)
    assert done and done[0]["removed"] == 300
    for sport in range(49800, 49800 + 600):
        udp(env, sport)
    advance(env, 351 * S)
    results: list[tuple[dict, list]] = []

    def sweep() -> None:
        with Datapath(env.dp.node, env.dp.netns) as dp:
            out: list[dict] = []
            results.append((dp.sweep(removed=out), out))

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(r["removed"] for r, _ in results) == 600
    ports = sorted(f["env_port"] for _, out in results for f in out)
    assert ports == list(range(49800, 49800 + 600))  # each once, with its own record
    assert env.dp.flows() == []
    g = env.dp.map("flow_guard").lookup(0)
    assert (g["count"], g["holes"]) == (0, 0), g  # nothing left, no hole to walk past


def test_a_node_without_the_reaper_sweeps_from_user_space(env):
    """A node pinned by a build from before the reaper: the sweep still works, and says so."""
    pin = paths.progs_dir(env.dp.node) / REAPER
    fd = bpfsys.obj_get(str(pin))
    try:
        pin.unlink()
        with Datapath(env.dp.node, env.dp.netns) as dp:
            assert not dp.has_reaper()
            udp(env, 48200)
            advance(env, 351 * S)
            rep = dp.sweep()
            assert (rep["reaper"], rep["removed"]) == ("user space", 1), rep
            assert dp.flows() == []
    finally:
        if not pin.exists():
            bpfsys.obj_pin(fd, str(pin))
        import os
        os.close(fd)
    assert env.dp.has_reaper()


def test_a_flush_reaps_again_what_changed_under_it(env):
    """A flush removes live entries too: one that a packet moved on between the read and the
    reap (the reaper keeps it: its time changed) is read again and, still the flush's, goes."""
    for sport in (48300, 48301):
        udp(env, sport)
    advance(env, 351 * S)

    def between(stage: str, entries: list) -> None:
        if stage == "chosen":  # reopened in place: a new time
            assert udp(env, 48300)[2].get("flow_reopened") == 1

    env.dp._reap_hook = between
    before = reap_counts(env)
    assert env.dp.flush_flows(vnis=[VNI_A]) == 2
    after = reap_counts(env)
    assert (after["kept_changed"] - before["kept_changed"],
            after["removed_flush"] - before["removed_flush"]) == (1, 2)
    assert env.dp.flows() == []
