"""flow_hot (types.h): the short way of established packets. A flow's slot is where user space
computes it; established packets both ways take it and leave the `flows` entry alone; listings
add the slot's share; the long way folds it back (counters near their width, another flow
taking an idle slot); a slot serves only its own key and owner; packets that change state or
MAC, flushed flows and a table where the LRU may evict never take it."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from conftest import (ENV_IP, ENV_MAC, GW_A, ORDERS, SERVER, VNI_A, VNI_TINY, WORKER, env_frame,
                      node_env, tunnel)
from eniplane import datapath, probe
from eniplane.sgcompile import Rule

DEST = "10.0.0.20"


@pytest.fixture(scope="module", params=list(ORDERS))
def hot(lab, request):
    with node_env(lab, f"hot-{request.param}",
                  {"ENIPLANE_TEST_HOOKS": 1, **ORDERS[request.param]}) as e:
        yield e


@pytest.fixture
def env(hot):
    hot.dp.flush_flows()
    for vni, idx, addr, lo, hi in ((VNI_A, 1, "10.0.1.4", 1024, 65535),
                                   (VNI_TINY, 3, "10.0.2.4", 2000, 2001)):
        hot.dp.set_eni(vni, idx, 1, addr, lo, hi)
    for vni in (VNI_A, VNI_TINY):
        hot.dp.set_sg_rules(vni, [Rule.of("tcp", "10.0.0.0/16", (80, 80)),
                                  Rule.of("udp", "10.0.0.0/16", (7, 7))])
    return hot


def advance(env, ns: int) -> None:
    m = env.dp.map("clock_shift")
    m.update(0, m.lookup(0) + int(ns))


def send(env, l4, sport_mac: str = ENV_MAC, vni: int = VNI_A, dst: str = SERVER):
    f = env_frame(l4, dst=dst)
    f[Ether].src = sport_mac
    return env.run("xdp_fabric", bytes(tunnel(f, vni=vni)))


def reply(env, out: bytes, l4):
    p = Ether(out)
    r = Ether(src=GW_A, dst=p[Ether].src) / IP(src=p[IP].dst, dst=p[IP].src) / l4
    name = next(n for n in env.vpc_if if n.endswith("vpca"))
    return env.run("xdp_vpc", bytes(r), name)


def key_of(out: bytes, proto: int = 17) -> dict:
    p = Ether(out)
    return {"vpc_idx": 1, "proto": proto, "eni_addr": p[IP].src, "remote": p[IP].dst,
            "eni_port": p[IP].payload.sport, "remote_port": p[IP].payload.dport}


def slot_of(env, key: dict) -> tuple[int, dict] | None:
    """The flow_hot slot that holds `key`, found the way the datapath finds it (hot_sets)."""
    m = env.dp.map("flow_hot")
    raw_key = env.dp.map("flows")._key(key)
    for i in probe.hot_ways(env.dp.config()["port_secret"], raw_key, m.max_entries):
        raw = m.lookup_raw(i)
        if raw[:16] == raw_key:
            return i, m.decode_value(raw)
    return None


def entry(env, key: dict) -> dict:
    """The `flows` entry itself, without its slot's share."""
    return env.dp.map("flows").lookup(key)


def test_established_packets_take_the_slot_both_ways_and_listings_add_it(env):
    got, out, d = send(env, UDP(sport=31000, dport=7) / Raw(b"a"))
    assert (got, d.get("fwd_new_flow")) == ("REDIRECT", 1), d
    k = key_of(out)
    assert slot_of(env, k) is not None  # where user space computes it: the new flow's slot
    for _ in range(3):
        got, o2, d = send(env, UDP(sport=31000, dport=7) / Raw(b"bb"))
        assert (got, d.get("fwd_established")) == ("REDIRECT", 1), d
        assert Ether(o2)[UDP].sport == k["eni_port"]
    for _ in range(2):
        got, back, d = reply(env, out, UDP(sport=7, dport=k["eni_port"]) / Raw(b"r"))
        assert (got, d.get("rev_established")) == ("REDIRECT", 1), d
        assert Ether(back)[VXLAN].payload[UDP].dport == 31000
        assert Ether(back)[VXLAN].payload[IP].dst == ENV_IP
    e = entry(env, k)
    _, h = slot_of(env, k)
    # the entry saw only the first packet; the slot has the rest
    assert (e["tx_packets"], e["rx_packets"]) == (1, 0)
    assert (h["tx_packets"], h["rx_packets"]) == (3, 2)
    f = env.dp.find_flow(WORKER, VNI_A, ENV_IP, 31000, SERVER, 7, 17)
    assert (f["tx_packets"], f["rx_packets"]) == (4, 2)
    assert f["last_seen_ns"] == max(e["last_seen_ns"], h["last_seen_ns"])
    listed = [x for x in env.dp.flows() if x["env_port"] == 31000]
    assert [(x["tx_packets"], x["tx_bytes"], x["rx_packets"]) for x in listed] == \
        [(4, f["tx_bytes"], 2)]


def test_counters_near_their_width_are_folded_into_the_entry(env):
    _, out, _ = send(env, UDP(sport=31001, dport=7) / Raw(b"a"))
    k = key_of(out)
    send(env, UDP(sport=31001, dport=7) / Raw(b"a"))
    reply(env, out, UDP(sport=7, dport=k["eni_port"]) / Raw(b"r"))
    assert (entry(env, k)["tx_packets"], slot_of(env, k)[1]["tx_packets"]) == (1, 1)
    i, h = slot_of(env, k)
    env.dp.map("flow_hot").update(i, {**h, "tx_packets": 0xFFFF})  # as 65,535 packets leave it
    got, _, d = send(env, UDP(sport=31001, dport=7) / Raw(b"a"))
    assert (got, d.get("fwd_established")) == ("REDIRECT", 1), d
    e, (_, h) = entry(env, k), slot_of(env, k)
    assert (e["tx_packets"], e["rx_packets"]) == (1 + 0xFFFF + 1, 1)  # all of it, in the entry
    assert (h["tx_packets"], h["rx_packets"], h["last_seen_ns"]) == (0, 0, e["last_seen_ns"])


def _first_port_and_sets(env):
    """(environment port, destination) -> (its flow's first probe port, that key's two sets)."""
    secret = env.dp.config()["port_secret"]
    sets = env.dp.map("flow_hot").max_entries // probe.HOT_WAYS
    eni = env.dp.map("enis").lookup(VNI_A)
    flows = env.dp.map("flows")

    def of(sport: int, dst: str) -> tuple[int, tuple[int, int]]:
        port = probe.probe_ports(secret, 1024, 65535, WORKER, VNI_A, ENV_IP, sport, dst, 7,
                                 17)[0]
        raw = flows._key({"vpc_idx": eni["vpc_idx"], "proto": 17, "eni_addr": eni["addr"],
                          "remote": dst, "eni_port": port, "remote_port": 7})
        return port, probe.hot_sets(secret, raw, sets)
    return of


def _flows_for_sets(env, wanted: list[int], taken: set[tuple[int, str]],
                    sports: tuple[int, ...]) -> dict[int, list[tuple[int, str]]]:
    """HOT_WAYS flows (environment port, destination) whose first set is each of `wanted`, none
    with a key in `taken` (which gains theirs). Destinations across the VPC's /16 (its rules
    allow them all): about sets * HOT_WAYS candidates give a set its HOT_WAYS, so 65,535
    destinations for each of four ports leave a set short of them about once in 10^8."""
    of = _first_port_and_sets(env)
    by_set: dict[int, list[tuple[int, str]]] = {s: [] for s in wanted}
    for n in range(1, 65536):
        dst = f"10.0.{n >> 8}.{n & 0xFF}"
        if dst in ("10.0.1.4", "10.0.2.4"):  # the ENIs' own
            continue
        for sport in sports:
            port, (first, _) = of(sport, dst)
            group = by_set.get(first)
            if group is None or len(group) == probe.HOT_WAYS or (port, dst) in taken:
                continue
            taken.add((port, dst))
            group.append((sport, dst))
        if all(len(g) == probe.HOT_WAYS for g in by_set.values()):
            return by_set
    raise AssertionError(f"not {probe.HOT_WAYS} flows for each of the sets {wanted}")


def _two_sets_and_one_more(env, cs: range = range(1024, 1100),
                           sports: tuple[int, ...] = (31100, 31101, 31110, 31111)
                           ) -> tuple[int, list[tuple[int, str]]]:
    """A flow c (an environment port of VNI_A to SERVER, from `cs`) and 2 * HOT_WAYS flows
    (environment port from `sports`, destination) whose first sets are c's two sets, HOT_WAYS
    each: sent before c, they fill both. (A flush leaves the slots where they are, of an old
    generation: a test that moves flows about uses ports of its own, so that the slots it
    leaves do not place another test's flows.)"""
    of = _first_port_and_sets(env)
    c, c_port = next((sp, p) for sp in cs for p, s in [of(sp, SERVER)] if s[0] != s[1])
    a_set, b_set = of(c, SERVER)[1]
    by_set = _flows_for_sets(env, [a_set, b_set], {(c_port, SERVER)}, sports)
    return c, by_set[a_set] + by_set[b_set]


def _other_sets(env, held: list[tuple[int, str]]) -> list[int]:
    """The set each of `held` would move to (hot_movable): its second (all sit in their first)."""
    of = _first_port_and_sets(env)
    return list(dict.fromkeys(of(*f)[1][1] for f in held))


def test_two_full_sets_give_an_idle_slot_to_a_sending_flow_after_folding_it(env):
    c, held = _two_sets_and_one_more(env)
    a, rest = held[0], held[1:]
    # the sets that the sixteen could move to, full as well: no move makes room for c
    of = _first_port_and_sets(env)
    taken = {(of(*f)[0], f[1]) for f in (*held, (c, SERVER))}
    c_sets = set(of(c, SERVER)[1])
    fillers = [f for s, g in _flows_for_sets(
        env, [s for s in _other_sets(env, held) if s not in c_sets], taken,
        (31102, 31103, 31104, 31109)).items() for f in g]
    outs = {}
    for sport, dst in (*held, *fillers, (c, SERVER)):
        _, outs[sport, dst], d = send(env, UDP(sport=sport, dport=7) / Raw(b"n"), dst=dst)
        assert d.get("fwd_new_flow") == 1, d
    assert all(slot_of(env, key_of(outs[f])) is not None for f in (*held, *fillers))  # full
    send(env, UDP(sport=a[0], dport=7) / Raw(b"a"), dst=a[1])  # a's slot: a packet of its own
    cf = (c, SERVER)
    for _ in range(4):  # each tries a move: none can be made
        got, _, d = send(env, UDP(sport=c, dport=7) / Raw(b"c"))
        assert (got, d.get("fwd_established")) == ("REDIRECT", 1), d
    assert slot_of(env, key_of(outs[cf])) is None  # every slot of both sets sends: c waits
    advance(env, 1_500_000_000)
    for sport, dst in rest:  # they send, a is idle
        send(env, UDP(sport=sport, dport=7) / Raw(b"b"), dst=dst)
    flows, ka = env.dp.map("flows"), key_of(outs[a])
    a_seen = flows.lookup(ka)["last_seen_ns"]
    flows.update(ka, {**flows.lookup(ka), "last_seen_ns": 0})  # as a takeover's claim leaves it
    send(env, UDP(sport=c, dport=7) / Raw(b"c"))
    assert slot_of(env, key_of(outs[a])) is None
    assert slot_of(env, key_of(outs[cf])) is not None  # a's slot went to c
    assert all(slot_of(env, key_of(outs[f])) is not None for f in rest)
    assert entry(env, ka)["tx_packets"] == 2  # a's slot folded first
    assert entry(env, ka)["last_seen_ns"] == 0  # its time too, but never over a claim's 0
    assert entry(env, key_of(outs[cf]))["tx_packets"] == 6
    flows.update(ka, {**flows.lookup(ka), "last_seen_ns": a_seen})  # no claim ever completes it


def test_a_flow_without_a_slot_makes_room_by_moving_one_to_its_other_set(env):
    """Both sets of c full of sending flows whose other sets have room: a packet of c on the
    long way takes the slot of one of them (hot_movable), after folding its counters into its
    entry; that flow's next packet finds its other set. Listings lose no packet of either."""
    c, held = _two_sets_and_one_more(env, range(1100, 1200), (31105, 31106, 31107, 31108))
    of = _first_port_and_sets(env)
    c_sets = of(c, SERVER)[1]
    outs = {}
    for sport, dst in (*held, (c, SERVER)):
        _, outs[sport, dst], d = send(env, UDP(sport=sport, dport=7) / Raw(b"n"), dst=dst)
        assert d.get("fwd_new_flow") == 1, d
    for sport, dst in held:  # one more each, on the short way: counted in their slots
        send(env, UDP(sport=sport, dport=7) / Raw(b"s"), dst=dst)
    cf = (c, SERVER)
    assert slot_of(env, key_of(outs[cf])) is None
    sent_c = 1
    for _ in range(3):  # a victim whose other set is one of c's own cannot move: try again
        got, _, d = send(env, UDP(sport=c, dport=7) / Raw(b"c"))
        sent_c += 1
        assert (got, d.get("fwd_established")) == ("REDIRECT", 1), d
        if slot_of(env, key_of(outs[cf])) is not None:
            break
    i, _ = slot_of(env, key_of(outs[cf]))
    assert i // probe.HOT_WAYS in c_sets
    moved = [f for f in held if slot_of(env, key_of(outs[f])) is None]
    assert len(moved) == 1, moved  # one gave its slot up, the rest kept theirs
    v = moved[0]
    assert entry(env, key_of(outs[v]))["tx_packets"] == 2  # its slot folded into its entry
    got, _, d = send(env, UDP(sport=v[0], dport=7) / Raw(b"v"), dst=v[1])  # the long way
    assert (got, d.get("fwd_established")) == ("REDIRECT", 1), d
    j, h = slot_of(env, key_of(outs[v]))
    secret = env.dp.config()["port_secret"]
    sets = env.dp.map("flow_hot").max_entries // probe.HOT_WAYS
    v_sets = probe.hot_sets(secret, env.dp.map("flows")._key(key_of(outs[v])), sets)
    assert j // probe.HOT_WAYS == v_sets[1] not in c_sets  # its other set
    got, _, d = send(env, UDP(sport=v[0], dport=7) / Raw(b"v"), dst=v[1])
    assert (got, d.get("fwd_established")) == ("REDIRECT", 1), d
    assert slot_of(env, key_of(outs[v]))[1]["tx_packets"] == 1  # the short way, in its new slot
    for f, n in ((v, 4), (cf, sent_c), *((f, 2) for f in held if f != v)):
        got = env.dp.find_flow(WORKER, VNI_A, ENV_IP, f[0], f[1], 7, 17)
        assert got["tx_packets"] == n, (f, got)


def test_a_flow_whose_first_set_is_full_takes_its_second(env):
    """The first set's eight, then a flow with the same first set: its slot is in its second
    set, where the datapath and user space both find it; its packets take the short way."""
    c, held = _two_sets_and_one_more(env)
    secret = env.dp.config()["port_secret"]
    sets = env.dp.map("flow_hot").max_entries // probe.HOT_WAYS
    first = held[:probe.HOT_WAYS]  # the flows whose first set is c's first
    outs = {f: send(env, UDP(sport=f[0], dport=7) / Raw(b"n"), dst=f[1])[1] for f in first}
    _, out, d = send(env, UDP(sport=c, dport=7) / Raw(b"c"))
    assert d.get("fwd_new_flow") == 1, d
    k = key_of(out)
    i, h = slot_of(env, k)
    s0, s1 = probe.hot_sets(secret, env.dp.map("flows")._key(k), sets)
    assert all(slot_of(env, key_of(o))[0] // probe.HOT_WAYS == s0 for o in outs.values())
    assert i // probe.HOT_WAYS == s1 != s0
    for _ in range(3):
        got, _, d = send(env, UDP(sport=c, dport=7) / Raw(b"c"))
        assert (got, d.get("fwd_established")) == ("REDIRECT", 1), d
    got, _, d = reply(env, out, UDP(sport=7, dport=k["eni_port"]) / Raw(b"r"))
    assert (got, d.get("rev_established")) == ("REDIRECT", 1), d
    assert (entry(env, k)["tx_packets"], slot_of(env, k)[1]["tx_packets"]) == (1, 3)
    assert slot_of(env, k)[1]["rx_packets"] == 1
    f = env.dp.find_flow(WORKER, VNI_A, ENV_IP, c, SERVER, 7, 17)
    assert (f["tx_packets"], f["rx_packets"]) == (4, 1)  # listings find the second set too


def test_a_slot_serves_only_its_own_owner(env):
    """Two environment ports whose probes start at the same port: the second flow's probe
    begins at the first one's key, whose slot names the first owner. It never takes it."""
    secret = env.dp.config()["port_secret"]
    starts: dict[int, int] = {}
    pair = None
    for sport in range(43000, 43100):
        s = probe.probe_start(probe.port_hash(secret, WORKER, VNI_TINY, ENV_IP, sport, DEST, 7,
                                              17), 2)
        if s in starts:
            pair = (starts[s], sport)
            break
        starts[s] = sport
    assert pair
    first, second = pair
    _, o1, _ = send(env, UDP(sport=first, dport=7) / Raw(b"1"), vni=VNI_TINY, dst=DEST)
    _, o2, d = send(env, UDP(sport=second, dport=7) / Raw(b"2"), vni=VNI_TINY, dst=DEST)
    assert d.get("fwd_new_flow") == 1, d
    p1, p2 = Ether(o1)[UDP].sport, Ether(o2)[UDP].sport
    assert p1 != p2
    for _ in range(3):
        got, o, d = send(env, UDP(sport=second, dport=7) / Raw(b"2"), vni=VNI_TINY, dst=DEST)
        assert (got, d.get("flow_probed"), Ether(o)[UDP].sport) == ("REDIRECT", 1, p2), d
    h1 = slot_of(env, key_of(o1))[1]
    assert (h1["env_port"], h1["tx_packets"]) == (first, 0)  # the first flow's, untouched
    f2 = env.dp.find_flow(WORKER, VNI_TINY, ENV_IP, second, DEST, 7, 17)
    assert f2["tx_packets"] == 4 and f2["nat_port"] == p2


def test_state_changes_and_a_moved_mac_go_the_long_way(env):
    _, out, _ = send(env, TCP(sport=32000, dport=80, flags="S"))
    k = key_of(out, proto=6)
    reply(env, out, TCP(sport=80, dport=k["eni_port"], flags="SA"))
    send(env, TCP(sport=32000, dport=80, flags="A"))
    assert entry(env, k)["state"] == 7  # SYN, SYN/ACK, ACK: each written at once
    for _ in range(2):
        got, _, d = send(env, TCP(sport=32000, dport=80, flags="PA") / Raw(b"data"))
        assert d.get("fwd_established") == 1, d
    assert slot_of(env, k)[1]["tx_packets"] == 2  # data: the short way
    send(env, TCP(sport=32000, dport=80, flags="FA"))
    assert entry(env, k)["state"] & 8  # FIN_OUT, in the entry at once
    assert slot_of(env, k)[1]["state"] == entry(env, k)["state"]
    moved = "02:ee:00:00:00:99"
    got, _, d = send(env, TCP(sport=32000, dport=80, flags="A"), sport_mac=moved)
    assert d.get("fwd_established") == 1, d
    assert entry(env, k)["env_mac"] == moved  # replies follow it from this packet on
    got, back, d = reply(env, out, TCP(sport=80, dport=k["eni_port"], flags="A"))
    assert Ether(back)[VXLAN].payload[Ether].dst == moved


def test_a_slot_being_written_serves_no_packet_and_no_other_writer(env):
    """A CPU writing a slot marks it busy first (hot_claim: its gen HOT_GEN_BUSY, by a
    compare-and-swap): another CPU's packets of its flow go the long way meanwhile and leave the
    slot alone, instead of writing it at the same time (one flow's key with another's owner)."""
    _, out, _ = send(env, UDP(sport=31003, dport=7) / Raw(b"a"))
    k = key_of(out)
    send(env, UDP(sport=31003, dport=7) / Raw(b"a"))
    i, h = slot_of(env, k)
    assert (h["tx_packets"], entry(env, k)["tx_packets"]) == (1, 1)
    slots = env.dp.map("flow_hot")
    slots.update(i, {**h, "gen": datapath.HOT_GEN_BUSY})
    got, _, d = send(env, UDP(sport=31003, dport=7) / Raw(b"a"))
    assert (got, d.get("fwd_established")) == ("REDIRECT", 1), d
    got, _, d = reply(env, out, UDP(sport=7, dport=k["eni_port"]) / Raw(b"r"))
    assert (got, d.get("rev_established")) == ("REDIRECT", 1), d
    assert slots.lookup(i) == {**h, "gen": datapath.HOT_GEN_BUSY}  # not used, not rewritten
    assert (entry(env, k)["tx_packets"], entry(env, k)["rx_packets"]) == (2, 1)  # the long way
    slots.update(i, h)  # the writer done
    send(env, UDP(sport=31003, dport=7) / Raw(b"a"))
    assert (slot_of(env, k)[1]["tx_packets"], entry(env, k)["tx_packets"]) == (2, 2)


def test_a_reply_while_entries_may_go_looks_its_entry_up_again_and_is_delivered(env):
    """While flow_guard.holes says entries may go (the LRU may evict, a sweep deletes), the
    return path looks its entry up again after copying the owner (flow_vanished): an element
    the LRU handed to another key would carry another flow's owner. An entry that stayed is
    the same element, and its reply goes through."""
    _, out, _ = send(env, UDP(sport=31004, dport=7) / Raw(b"a"))
    k = key_of(out)
    env.dp.hot_invalidate()  # the long way, where the entry is read
    guard = env.dp.map("flow_guard")
    g = guard.lookup(0)
    guard.update(0, {**g, "holes": 1})
    try:
        got, back, d = reply(env, out, UDP(sport=7, dport=k["eni_port"]) / Raw(b"r"))
        assert (got, d.get("rev_established")) == ("REDIRECT", 1), d
        assert Ether(back)[VXLAN].payload[UDP].dport == 31004
    finally:
        guard.update(0, g)


def test_a_flush_never_makes_the_busy_mark_a_generation(env):
    g = env.dp.map("hot_gen")
    before = g.lookup(0)
    try:
        g.update(0, datapath.HOT_GEN_BUSY - 1)
        env.dp.hot_invalidate()
        assert g.lookup(0) == 0
    finally:
        g.update(0, before + 1)


def test_a_flush_stops_the_slots_at_once(env):
    _, out, _ = send(env, UDP(sport=31002, dport=7) / Raw(b"a"))
    send(env, UDP(sport=31002, dport=7) / Raw(b"a"))
    assert slot_of(env, key_of(out))[1]["tx_packets"] == 1
    gen = env.dp.map("hot_gen").lookup(0)
    env.dp.flush_flows(vnis={VNI_A})
    assert env.dp.map("hot_gen").lookup(0) == gen + 1
    got, _, d = reply(env, out, UDP(sport=7, dport=key_of(out)["eni_port"]) / Raw(b"r"))
    assert (got, d.get("drop_no_flow")) == ("DROP", 1), d  # not from the slot
    got, _, d = send(env, UDP(sport=31002, dport=7) / Raw(b"a"))
    assert d.get("fwd_new_flow") == 1, d  # a new flow, not the slot's
    f = env.dp.find_flow(WORKER, VNI_A, ENV_IP, 31002, SERVER, 7, 17)
    assert f["tx_packets"] == 1  # nothing of the flushed flow's slot carried over


def test_no_slot_serves_a_table_the_lru_may_evict_from(small_env):
    """A 64-entry table may evict from its first flow (flow_guard.holes): slots stop (hot_gen)
    and none is filled, so an evicted flow is never served from one."""
    env = small_env
    env.dp.flush_flows()
    gen = env.dp.map("hot_gen").lookup(0)
    for _ in range(3):
        got, out, d = send(env, UDP(sport=31003, dport=7) / Raw(b"a"))
        assert got == "REDIRECT", d
    assert env.dp.map("flow_guard").lookup(0)["holes"] == 1
    assert slot_of(env, key_of(out)) is None
    assert env.dp.map("flow_hot").max_entries == 64  # HOT_SLOTS_MIN
    assert env.dp.map("hot_gen").lookup(0) >= gen
    assert entry(env, key_of(out))["tx_packets"] == 3


def test_a_new_flow_empties_its_keys_old_slot_even_when_no_slot_may_be_filled(env):
    """The kept fuzz case a3b988038e0b: a flushed flow's slot (its counters still in it) met
    the same tuple's new flow while flow_guard said holes; the new entry must not inherit it."""
    _, out, _ = send(env, UDP(sport=31004, dport=7) / Raw(b"a"))
    send(env, UDP(sport=31004, dport=7) / Raw(b"a"))
    k = key_of(out)
    assert slot_of(env, k)[1]["tx_packets"] == 1
    env.dp.flush_flows(vnis={VNI_A})
    g = env.dp.map("flow_guard")
    g.update(0, {**g.lookup(0), "holes": 1})
    try:
        got, out2, d = send(env, UDP(sport=31004, dport=7) / Raw(b"a"))
        assert (d.get("fwd_new_flow"), key_of(out2)) == (1, k), d
        assert slot_of(env, k) is None  # emptied, not filled
        f = env.dp.find_flow(WORKER, VNI_A, ENV_IP, 31004, SERVER, 7, 17)
        assert f["tx_packets"] == 1
    finally:
        env.dp.guard_resync()


def test_slots_off_leave_them_alone_and_on_again_stops_them_first(env):
    """NODE_F_NO_HOT (bench.hot_ab's switch): established packets go the long way and touch no
    slot; turning the slots on again stops them all (hot_gen), so no state or MAC that changed
    meanwhile is used, and each flow's next packet folds its slot."""
    _, out, _ = send(env, TCP(sport=32001, dport=80, flags="S"))
    k = key_of(out, proto=6)
    reply(env, out, TCP(sport=80, dport=k["eni_port"], flags="SA"))
    send(env, TCP(sport=32001, dport=80, flags="A"))
    send(env, TCP(sport=32001, dport=80, flags="PA") / Raw(b"on"))
    assert slot_of(env, k)[1]["tx_packets"] == 1
    env.dp.set_hot(False)
    try:
        send(env, TCP(sport=32001, dport=80, flags="PA") / Raw(b"off"))
        send(env, TCP(sport=32001, dport=80, flags="FA"))
        assert slot_of(env, k)[1]["tx_packets"] == 1  # untouched
        assert slot_of(env, k)[1]["state"] == 7 and entry(env, k)["state"] & 8
    finally:
        env.dp.set_hot(True)
    got, _, d = send(env, TCP(sport=32001, dport=80, flags="A"))
    assert d.get("fwd_established") == 1, d
    e, (_, h) = entry(env, k), slot_of(env, k)
    assert e["tx_packets"] == 6 and h["tx_packets"] == 0  # folded on the long way
    assert h["state"] == e["state"] and h["state"] & 8  # the FIN the slot did not see


def test_the_metrics_count_the_flows_on_the_short_way(env):
    """flow_summary's short_way (eniplane_flows_short_way): live flows whose slot is current."""
    assert env.dp.flow_summary()["short_way"] == 0
    _, out, _ = send(env, UDP(sport=31006, dport=7) / Raw(b"a"))
    send(env, UDP(sport=31007, dport=7) / Raw(b"b"))
    assert env.dp.flow_summary()["short_way"] == 2
    env.dp.hot_invalidate()  # as a flush of other flows would: both go the long way next
    assert env.dp.flow_summary()["short_way"] == 0
    send(env, UDP(sport=31006, dport=7) / Raw(b"a"))
    assert env.dp.flow_summary()["short_way"] == 1
