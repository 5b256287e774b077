"""probe.resync_guard on tables built by hand: no map, no kernel (tests/datapath/test_probe.py
checks the same rules against the real flow table)."""

from __future__ import annotations

from eniplane import probe

SECRET = 0x1234567
ENIS = {7: {"port_lo": 2000, "port_hi": 2009, "vpc_idx": 1, "addr": "10.0.0.5"}}
EMPTY = {"count": 0, "holes": 0, "depths": 0, "evicted": 0}


def flow(sport: int, depth: int) -> dict:
    """A flow of ENI 7 towards 10.0.0.20:7/udp, sitting `depth` ports into its probe."""
    f = {"worker": "192.0.2.1", "vni": 7, "env_addr": "172.16.0.2", "env_port": sport,
         "remote": "10.0.0.20", "remote_port": 7, "proto": 17, "vpc_idx": 1,
         "eni_addr": "10.0.0.5"}
    ports = probe.flow_probe(f, ENIS, SECRET)
    return {**f, "nat_port": ports[depth]}


def sharing_start() -> tuple[dict, dict]:
    """Two flows whose probes start at the same port: the second sits one port further."""
    first = flow(1000, 0)
    for sport in range(1001, 2000):
        f = flow(sport, 1)
        if probe.flow_probe(f, ENIS, SECRET)[0] == first["nat_port"]:
            return first, f
    raise AssertionError("no two probes share a start")


def test_a_flow_behind_an_emptied_port_makes_a_hole():
    first, second = sharing_start()
    g = probe.resync_guard([second], ENIS, SECRET, EMPTY, EMPTY, None, 262144)
    assert g == {"count": 1, "holes": 1, "depths": 0b10, "evicted": 0}


def test_no_hole_while_the_port_in_front_is_taken():
    first, second = sharing_start()
    g = probe.resync_guard([first, second], ENIS, SECRET, EMPTY, EMPTY, None, 262144)
    assert g == {"count": 2, "holes": 0, "depths": 0b11, "evicted": 0}


def test_incremental_checks_only_touched_destinations_and_keeps_depths():
    first, second = sharing_start()
    start = {"count": 3, "holes": 0, "depths": 0b100}
    g = probe.resync_guard([second], ENIS, SECRET, start, start, set(), 262144, deleted=2)
    assert g == {"count": 1, "holes": 0, "depths": 0b100, "evicted": 0}
    g = probe.resync_guard([second], ENIS, SECRET, start, start, {probe.dest(second)}, 262144,
                           deleted=2)
    assert g == {"count": 1, "holes": 1, "depths": 0b110, "evicted": 0}


def test_what_the_datapath_added_meanwhile_is_carried_over():
    first, _ = sharing_start()
    now = {"count": 2, "holes": 1, "depths": 0b1000}
    g = probe.resync_guard([first], ENIS, SECRET, EMPTY, now, None, 262144)
    assert g == {"count": 3, "holes": 1, "depths": 0b1001, "evicted": 0}



def test_entries_missing_beyond_the_deleted_ones_were_evicted():
    """count says 5 were inserted; 1 remains and the caller deleted 2: the LRU took 2."""
    first, _ = sharing_start()
    start = {**EMPTY, "count": 5, "evicted": 3}
    g = probe.resync_guard([first], ENIS, SECRET, start, start, [], 262144, deleted=2)
    assert (g["count"], g["evicted"]) == (1, 5)


def test_a_key_has_two_sets_that_spread_apart_from_each_other():
    """hot_sets: the second set is not a function of the first (else a full first set would
    send its flows to one second set, and two choices would be one)."""
    import os
    sets = 8192
    pairs = [probe.hot_sets(SECRET, os.urandom(16), sets) for _ in range(20000)]
    assert all(0 <= a < sets and 0 <= b < sets for a, b in pairs)
    assert sum(a == b for a, b in pairs) < 20  # 20000 / 8192 expected about 2.4
    seconds_of: dict[int, set[int]] = {}
    for a, b in pairs:
        seconds_of.setdefault(a, set()).add(b)
    # keys sharing a first set scatter over second sets: as many as keys, nearly
    assert sum(len(v) for v in seconds_of.values()) > 0.99 * len(pairs)
    # hot_ways: both sets' slots, first set's first, each once
    key = os.urandom(16)
    a, b = probe.hot_sets(SECRET, key, sets)
    ways = probe.hot_ways(SECRET, key, sets * probe.HOT_WAYS)
    assert ways[:probe.HOT_WAYS] == list(range(a * probe.HOT_WAYS, (a + 1) * probe.HOT_WAYS))
    assert len(ways) == (probe.HOT_WAYS if a == b else 2 * probe.HOT_WAYS)
    assert {w // probe.HOT_WAYS for w in ways} == {a, b}
