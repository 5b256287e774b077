"""Flow lifecycle rows: TCP state, idle expiry of each kind, the RST answer (exact bytes), reopen,
takeover of expired entries and per-ENI flow limits.

Time is moved with a test build's clock_shift map (-DENIPLANE_TEST_HOOKS): the datapath adds it
to its clock, and Datapath.now_ns() adds it too, so nothing here waits."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.contrib.geneve import GENEVE

from conftest import (ENV_IP, ENV_MAC, FABRIC_IP, FABRIC_MAC_SEEN, GATEWAY_MAC, GW_A, ORDERS,
                      SERVER, VNI_A, VNI_TINY, WORKER, WORKER_MAC, env_frame, node_env, tunnel)
from eniplane import lifecycle
from eniplane.sgcompile import Rule

S = lifecycle.NSEC_PER_SEC
GRACE = lifecycle.TAKEOVER_GRACE_NS
DEST = "10.0.0.20"  # VNI_TINY's destination: its two ports fill quickly


@pytest.fixture(scope="module", params=list(ORDERS))
def life(lab, request):
    with node_env(lab, f"life-{request.param}",
                  {"ENIPLANE_TEST_HOOKS": 1, **ORDERS[request.param]}) as e:
        yield e


@pytest.fixture
def env(life):
    """A clean table, the default timeouts and limits, the clock where it is."""
    life.dp.flush_flows()
    life.dp.set_timeouts(**lifecycle.DEFAULT_TIMEOUTS)
    life.dp.set_flow_limit(lifecycle.DEFAULT_FLOWS_PER_ENI)
    for vni, idx, vpc, addr, lo, hi in ((VNI_A, 1, 1, "10.0.1.4", 1024, 65535),
                                        (VNI_TINY, 3, 1, "10.0.2.4", 2000, 2001)):
        life.dp.set_eni(vni, idx, vpc, addr, lo, hi)
    life.dp.set_sg_rules(VNI_A, [Rule.of("tcp", "10.0.0.0/16", (80, 80)),
                                 Rule.of("udp", f"{SERVER}/32", (7, 7)),
                                 Rule.of("icmp", "0.0.0.0/0")])
    life.dp.map("takeover_race").update(0, 0)
    return life


def advance(env, ns: int) -> None:
    m = env.dp.map("clock_shift")
    m.update(0, m.lookup(0) + int(ns))


def fwd(env, l4, vni=VNI_A, dst=SERVER, src=ENV_IP):
    return env.run("xdp_fabric", bytes(tunnel(env_frame(l4, src=src, dst=dst), vni=vni)))


def reply(env, out_fwd: bytes, l4, ifname="vpca"):
    """The server's answer to a forwarded frame: addresses and ports swapped, `l4` on top."""
    p = Ether(out_fwd)
    r = Ether(src=GW_A, dst=p[Ether].src) / IP(src=p[IP].dst, dst=p[IP].src) / l4
    return env.run("xdp_vpc", bytes(r), _ifname(env, ifname))


def _ifname(env, short: str) -> str:
    return next(n for n in env.vpc_if if n.endswith(short))


def flow(env, sport: int, proto: int = 6, vni: int = VNI_A, dst: str = SERVER,
         dport: int = 80) -> dict:
    f = env.dp.find_flow(WORKER, vni, ENV_IP, sport, dst, dport, proto)
    assert f is not None, "no flow"
    return f


def state_of(env, sport: int, **kw) -> str:
    return flow(env, sport, **kw)["state"]


def nat_port(out: bytes) -> int:
    p = Ether(out)
    return p[TCP].sport if TCP in p else p[UDP].sport


# ---- TCP state -------------------------------------------------------------------------------
def test_tcp_states_from_syn_to_closed_and_a_reopen(env):
    got, out, d = fwd(env, TCP(sport=41000, dport=80, flags="S", seq=100))
    assert (got, d.get("fwd_new_flow")) == ("REDIRECT", 1), d
    assert state_of(env, 41000) == "syn_sent"
    got, back, d = reply(env, out, TCP(sport=80, dport=nat_port(out), flags="SA", seq=900, ack=101))
    assert (got, d.get("rev_established")) == ("REDIRECT", 1), d
    assert state_of(env, 41000) == "syn_received"
    steps = [("fwd", "A", "established"), ("fwd", "PA", "established"),
             ("fwd", "FA", "fin_wait"), ("rev", "FA", "closed"), ("fwd", "A", "closed")]
    for side, flags, want in steps:
        if side == "fwd":
            got, _, d = fwd(env, TCP(sport=41000, dport=80, flags=flags) / Raw(b"x"))
            assert (got, d.get("fwd_established")) == ("REDIRECT", 1), (flags, d)
        else:
            got, _, d = reply(env, out, TCP(sport=80, dport=nat_port(out), flags=flags))
            assert (got, d.get("rev_established")) == ("REDIRECT", 1), (flags, d)
        assert state_of(env, 41000) == want, (side, flags)
    # closed both ways: the same tuple's SYN opens it again at once, in the same entry
    before = flow(env, 41000)
    got, out2, d = fwd(env, TCP(sport=41000, dport=80, flags="S"))
    assert (got, d.get("fwd_new_flow"), d.get("flow_reopened")) == ("REDIRECT", 1, 1), d
    after = flow(env, 41000)
    assert after["nat_port"] == before["nat_port"] and after["state"] == "syn_sent"
    assert (after["tx_packets"], after["rx_packets"]) == (1, 0)  # a new flow's counters


def test_a_retransmitted_syn_is_not_a_reopen(env):
    fwd(env, TCP(sport=41001, dport=80, flags="S"))
    got, _, d = fwd(env, TCP(sport=41001, dport=80, flags="S"))
    assert (got, d.get("fwd_established"), d.get("flow_reopened")) == ("REDIRECT", 1, None), d


@pytest.mark.parametrize("side", ["fwd", "rev"])
def test_a_reset_flow_is_dead_at_once_both_ways(env, side):
    got, out, _ = fwd(env, TCP(sport=41002, dport=80, flags="S"))
    reply(env, out, TCP(sport=80, dport=nat_port(out), flags="SA"))
    fwd(env, TCP(sport=41002, dport=80, flags="A"))
    if side == "fwd":
        got, _, d = fwd(env, TCP(sport=41002, dport=80, flags="R"))
        assert (got, d.get("fwd_established")) == ("REDIRECT", 1), d  # the RST itself goes
    else:
        got, _, d = reply(env, out, TCP(sport=80, dport=nat_port(out), flags="R"))
        assert (got, d.get("rev_established")) == ("REDIRECT", 1), d
    assert state_of(env, 41002) == "reset"
    got, _, d = reply(env, out, TCP(sport=80, dport=nat_port(out), flags="A") / Raw(b"late"))
    assert (got, d.get("drop_flow_expired")) == ("DROP", 1), d
    got, _, d = fwd(env, TCP(sport=41002, dport=80, flags="A") / Raw(b"more"))
    assert (got, d.get("tx_tcp_rst")) == ("TX", 1), d
    got, _, d = fwd(env, TCP(sport=41002, dport=80, flags="R"))
    assert (got, d.get("drop_tcp_no_flow")) == ("DROP", 1), d  # a RST is never answered
    assert env.dp.flows(include_expired=False) == []


# ---- idle expiry -----------------------------------------------------------------------------
def _established(env, sport: int) -> bytes:
    got, out, _ = fwd(env, TCP(sport=sport, dport=80, flags="S"))
    reply(env, out, TCP(sport=80, dport=nat_port(out), flags="SA"))
    fwd(env, TCP(sport=sport, dport=80, flags="A"))
    assert state_of(env, sport) == "established"
    return out


def test_established_tcp_lives_its_timeout_then_gets_a_rst(env):
    out = _established(env, 41003)
    advance(env, 350 * S - S // 2)
    got, _, d = fwd(env, TCP(sport=41003, dport=80, flags="PA") / Raw(b"q"))
    assert (got, d.get("fwd_established")) == ("REDIRECT", 1), d  # idle 349.5 s: live
    advance(env, 351 * S)
    assert env.dp.flows(include_expired=False) == []
    assert env.dp.flow_states()["expired"] == 1
    got, _, d = reply(env, out, TCP(sport=80, dport=nat_port(out), flags="A"))
    assert (got, d.get("drop_flow_expired")) == ("DROP", 1), d
    got, _, d = fwd(env, TCP(sport=41003, dport=80, flags="PA") / Raw(b"q"))
    assert (got, d.get("tx_tcp_rst")) == ("TX", 1), d


@pytest.mark.parametrize("l4, timeout, sport", [
    (TCP(dport=80, flags="S"), 240, 41004),            # SYN only: transitory
    (UDP(dport=7) / Raw(b"u"), 350, 41005),
    (ICMP(type=8, id=41006) / Raw(b"p"), 60, None),
])
def test_idle_expiry_of_each_kind_then_the_tuple_opens_again(env, l4, timeout, sport):
    if sport is not None:
        l4 = l4.copy()
        l4.sport = sport
    proto = 6 if TCP in l4 else 17 if UDP in l4 else 1
    port = sport if sport is not None else 41006
    dport = 80 if proto == 6 else 7 if proto == 17 else 0
    got, _, d = fwd(env, l4)
    assert d.get("fwd_new_flow") == 1, d
    advance(env, timeout * S - S // 2)
    assert flow(env, port, proto=proto, dport=dport)
    assert len(env.dp.flows(include_expired=False)) == 1
    advance(env, S)
    assert env.dp.flows(include_expired=False) == []
    got, _, d = fwd(env, l4)  # a SYN, a datagram, an echo request: each opens it again
    assert (got, d.get("fwd_new_flow"), d.get("flow_reopened")) == ("REDIRECT", 1, 1), d
    assert len(env.dp.flows(include_expired=False)) == 1


def test_a_timeout_change_applies_to_existing_flows(env):
    fwd(env, UDP(sport=41007, dport=7) / Raw(b"u"))
    env.dp.set_timeouts(udp=2)
    advance(env, 2 * S + S // 10)
    assert env.dp.flows(include_expired=False) == []
    env.dp.set_timeouts(udp=350)
    assert len(env.dp.flows(include_expired=False)) == 1


def test_a_reopen_checks_the_security_groups_again(env):
    """A rule deleted after a tuple was used is enforced once the flow expires."""
    fwd(env, UDP(sport=41008, dport=7) / Raw(b"u"))
    env.dp.set_sg_rules(VNI_A, [Rule.of("tcp", "10.0.0.0/16", (80, 80))])
    got, _, d = fwd(env, UDP(sport=41008, dport=7) / Raw(b"u"))
    assert d.get("fwd_established") == 1, d  # a live flow stays allowed
    advance(env, 351 * S)
    got, _, d = fwd(env, UDP(sport=41008, dport=7) / Raw(b"u"))
    assert (got, d.get("drop_sg_denied")) == ("DROP", 1), d


# ---- the RST answer, byte for byte -----------------------------------------------------------
def _expected_rst(outer, tcp_in: TCP, payload: int) -> bytes:
    fl = int(tcp_in.flags)
    if fl & 0x10:
        seq, ack, flags = tcp_in.ack, 0, "R"
    else:
        seq, ack, flags = 0, (tcp_in.seq + payload + (fl >> 1 & 1) + (fl & 1)) & 0xFFFFFFFF, "RA"
    inner = (Ether(src=GATEWAY_MAC, dst=ENV_MAC) /
             IP(src=SERVER, dst=ENV_IP, ttl=64, id=0, flags=0, tos=0) /
             TCP(sport=tcp_in.dport, dport=tcp_in.sport, seq=seq, ack=ack, flags=flags,
                 window=0, urgptr=0))
    return bytes(Ether(src=FABRIC_MAC_SEEN, dst=WORKER_MAC) /
                 IP(src=FABRIC_IP, dst=WORKER, ttl=64, id=outer["id"], tos=outer["tos"]) /
                 UDP(sport=40000, dport=outer["dport"], chksum=0) / outer["tunnel"] / inner)


@pytest.mark.parametrize("tcp_in, payload", [
    (TCP(sport=41010, dport=80, flags="PA", seq=1000, ack=5000), b"hello"),  # <SEQ=SEG.ACK>
    (TCP(sport=41011, dport=80, flags="P", seq=0xFFFFFFF0, ack=0), b"x" * 40),  # wraps
    (TCP(sport=41012, dport=80, flags="F", seq=77), b""),  # FIN counts one
], ids=["ack", "no-ack-wraps", "fin"])
def test_rst_answer_exact_bytes_vxlan(env, tcp_in, payload):
    frame = tunnel(env_frame(tcp_in / Raw(payload) if payload else tcp_in))
    got, out, d = env.run("xdp_fabric", bytes(frame))
    assert (got, d.get("tx_tcp_rst"), d.get("xdp_tx")) == ("TX", 1, 1), d
    want = _expected_rst({"id": 1, "tos": 0, "dport": 4789,
                          "tunnel": VXLAN(vni=VNI_A, flags=0x08)}, tcp_in, len(payload))
    assert out == want, (Ether(out).show(dump=True), Ether(want).show(dump=True))


def test_rst_answer_exact_bytes_geneve_with_ip_options(env):
    """GENEVE with an option kept as it came; the environment's IP options are not echoed."""
    tcp_in = TCP(sport=41013, dport=80, flags="A", seq=5, ack=6)
    inner = Ether(src=ENV_MAC, dst=GATEWAY_MAC) / IP(src=ENV_IP, dst=SERVER,
                                                     options=b"\x01\x01\x01\x00") / tcp_in
    gen = GENEVE(vni=VNI_A, proto=0x6558, optionlen=1, options=b"\x00\x01\x02\x00")
    frame = (Ether(src=WORKER_MAC, dst=FABRIC_MAC_SEEN) / IP(src=WORKER, dst=FABRIC_IP, id=9) /
             UDP(sport=40000, dport=6081) / gen / inner)
    got, out, d = env.run("xdp_fabric", bytes(frame))
    assert (got, d.get("tx_tcp_rst")) == ("TX", 1), d
    want = _expected_rst({"id": 9, "tos": 0, "dport": 6081, "tunnel": gen}, tcp_in, 0)
    assert out == want, (Ether(out).show(dump=True), Ether(want).show(dump=True))


def test_no_rst_for_a_worker_not_placed(env):
    env.dp.sync_placements({})
    try:
        got, _, d = fwd(env, TCP(sport=41014, dport=80, flags="A"))
        assert (got, d.get("drop_worker_not_placed"), d.get("tx_tcp_rst")) == ("DROP", 1, None)
    finally:
        env.dp.sync_placements({(WORKER, v): 1 for v in (VNI_A, 200, VNI_TINY)})


# ---- ports come back: takeover, and not before its time --------------------------------------
def _udp_tiny(env, sport: int):
    return fwd(env, UDP(sport=sport, dport=7) / Raw(b"t"), vni=VNI_TINY, dst=DEST)


def test_an_expired_port_goes_to_another_tuple_only_after_timeout_and_grace(env):
    ports = set()
    for sport in (42000, 42001):
        got, out, d = _udp_tiny(env, sport)
        assert d.get("fwd_new_flow") == 1, d
        ports.add(nat_port(out))
    assert ports == {2000, 2001}
    got, _, d = _udp_tiny(env, 42002)
    assert (got, d.get("drop_port_exhausted")) == ("DROP", 1), d
    # expired, but within the grace: not yet another's. 10 ms past the timeout (more than a
    # jiffy of the coarse clock), so that 90 ms of the 100 ms grace are left for real time to
    # pass before the next packet (half of it was not always enough on a loaded host)
    advance(env, 350 * S + 10_000_000)
    assert all(env.dp.find_flow(WORKER, VNI_TINY, ENV_IP, sp, DEST, 7, 17)["live"] is False
               for sp in (42000, 42001))
    got, _, d = _udp_tiny(env, 42002)
    assert (got, d.get("drop_port_exhausted")) == ("DROP", 1), d
    advance(env, GRACE)
    got, out, d = _udp_tiny(env, 42002)
    assert (got, d.get("flow_takeover"), d.get("fwd_new_flow")) == ("REDIRECT", 1, 1), d
    taken = nat_port(out)
    f = env.dp.find_flow(WORKER, VNI_TINY, ENV_IP, 42002, DEST, 7, 17)
    assert f["nat_port"] == taken and f["tx_packets"] == 1 and f["live"] is not False
    # the port's old owner comes back: it takes the other expired entry, never its old one
    (loser,) = [p for p in (42000, 42001) if flow_port(env, p) is None]
    got, out, d = _udp_tiny(env, loser)
    assert (got, d.get("flow_takeover")) == ("REDIRECT", 1), d
    assert nat_port(out) != taken
    live = env.dp.flows(include_expired=False)
    assert sorted(f["nat_port"] for f in live) == [2000, 2001]
    assert sorted(f["env_port"] for f in live) == sorted([42002, loser])


def flow_port(env, sport: int) -> int | None:
    f = env.dp.find_flow(WORKER, VNI_TINY, ENV_IP, sport, DEST, 7, 17)
    return f["nat_port"] if f else None


def test_a_closed_tcp_port_waits_the_transitory_timeout_for_another_tuple(env):
    for sport in (42010, 42011):
        got, out, _ = fwd(env, TCP(sport=sport, dport=80, flags="S"), vni=VNI_TINY, dst=DEST)
        reply(env, out, TCP(sport=80, dport=nat_port(out), flags="SA"))
        fwd(env, TCP(sport=sport, dport=80, flags="FA"), vni=VNI_TINY, dst=DEST)
        reply(env, out, TCP(sport=80, dport=nat_port(out), flags="FA"))
        assert env.dp.find_flow(WORKER, VNI_TINY, ENV_IP, sport, DEST, 80, 6)["state"] == "closed"
    got, _, d = fwd(env, TCP(sport=42012, dport=80, flags="S"), vni=VNI_TINY, dst=DEST)
    assert (got, d.get("drop_port_exhausted")) == ("DROP", 1), d  # late segments may come
    got, _, d = fwd(env, TCP(sport=42010, dport=80, flags="S"), vni=VNI_TINY, dst=DEST)
    assert d.get("flow_reopened") == 1, d  # its own tuple: at once
    advance(env, 240 * S + 2 * GRACE)
    got, _, d = fwd(env, TCP(sport=42012, dport=80, flags="S"), vni=VNI_TINY, dst=DEST)
    assert (got, d.get("flow_takeover")) == ("REDIRECT", 1), d


def test_takeover_race_one_claim_wins_the_other_walks_on(env):
    """Another CPU claims the expired entry between this packet's read and its swap: this
    packet loses (drop_port_race) and its next packet walks on to the other expired entry."""
    for sport in (42020, 42021):
        _udp_tiny(env, sport)
    advance(env, 351 * S)
    env.dp.map("takeover_race").update(0, 1)
    got, _, d = _udp_tiny(env, 42022)
    assert (got, d.get("drop_port_race"), d.get("flow_takeover")) == ("DROP", 1, None), d
    got, out, d = _udp_tiny(env, 42022)
    assert (got, d.get("flow_takeover")) == ("REDIRECT", 1), d
    winner_port = 2000 if nat_port(out) == 2001 else 2001
    # the entry the other CPU "won" was left live, its owner unchanged: the two never share
    ports = [f["nat_port"] for f in env.dp.flows(include_expired=False)]
    assert sorted(ports) == [2000, 2001] and winner_port in ports


# ---- per-ENI flow limits ---------------------------------------------------------------------
def test_the_flow_limit_drops_new_flows_and_counts_them_per_eni(env):
    env.dp.set_eni(VNI_A, 1, 1, "10.0.1.4", 1024, 65535, max_flows=2)
    for sport in (43000, 43001):
        assert fwd(env, UDP(sport=sport, dport=7) / Raw(b"l"))[2].get("fwd_new_flow") == 1
    got, _, d = fwd(env, UDP(sport=43002, dport=7) / Raw(b"l"))
    assert (got, d.get("drop_flow_limit")) == ("DROP", 1), d
    assert env.dp.eni_stats(VNI_A)[VNI_A]["flows_limited"] == 1
    assert env.dp.eni_flow_entries()[VNI_A] == 2
    got, _, d = fwd(env, UDP(sport=43000, dport=7) / Raw(b"l"))
    assert d.get("fwd_established") == 1, d  # flows within the limit carry on
    # expired entries still count until taken over or swept; the sweep gives them back
    advance(env, 351 * S)
    got, _, d = fwd(env, UDP(sport=43002, dport=7) / Raw(b"l"))
    assert (got, d.get("drop_flow_limit")) == ("DROP", 1), d
    swept = env.dp.sweep()
    assert swept["removed"] == 2 and env.dp.eni_flow_entries()[VNI_A] == 0
    assert env.dp.map("flow_guard").lookup(0)["swept"] >= 2
    got, _, d = fwd(env, UDP(sport=43002, dport=7) / Raw(b"l"))
    assert (got, d.get("fwd_new_flow")) == ("REDIRECT", 1), d


def test_the_node_default_limit_and_an_enis_own(env):
    env.dp.set_flow_limit(1)
    assert env.dp.flow_limit() == 1 and env.dp.config()["flows_per_eni"] == 1
    assert fwd(env, UDP(sport=43010, dport=7) / Raw(b"l"))[2].get("fwd_new_flow") == 1
    assert fwd(env, UDP(sport=43011, dport=7) / Raw(b"l"))[2].get("drop_flow_limit") == 1
    env.dp.set_eni(VNI_A, 1, 1, "10.0.1.4", 1024, 65535, max_flows=3)  # overrides the node's
    assert fwd(env, UDP(sport=43011, dport=7) / Raw(b"l"))[2].get("fwd_new_flow") == 1


def test_at_its_limit_an_eni_takes_over_its_expired_entries_without_a_sweep(env):
    """Only an expired entry before the first empty slot of the new flow's probe: the flow's own
    walk stops at that slot, so an entry beyond it could never be found again."""
    from eniplane.probe import probe_ports

    env.dp.set_eni(VNI_TINY, 3, 1, "10.0.2.4", 2000, 2001, max_flows=1)
    assert _udp_tiny(env, 43020)[2].get("fwd_new_flow") == 1
    held = flow_port(env, 43020)
    secret = env.dp.config()["port_secret"]

    def starting_at(port: int) -> int:
        return next(sp for sp in range(43021, 44000) if probe_ports(
            secret, 2000, 2001, WORKER, VNI_TINY, ENV_IP, sp, DEST, 7, 17)[0] == port)

    behind_empty, first_held = starting_at(4001 - held), starting_at(held)
    assert _udp_tiny(env, first_held)[2].get("drop_flow_limit") == 1
    advance(env, 351 * S)
    got, _, d = _udp_tiny(env, behind_empty)  # the empty slot first: over the limit, no takeover
    assert (got, d.get("drop_flow_limit")) == ("DROP", 1), d
    got, out, d = _udp_tiny(env, first_held)
    assert (got, d.get("flow_takeover")) == ("REDIRECT", 1), d
    assert nat_port(out) == held and env.dp.eni_flow_entries()[VNI_TINY] == 1
    assert _udp_tiny(env, first_held)[2].get("fwd_established") == 1  # and found again


# ---- the sweeper -----------------------------------------------------------------------------
def test_sweep_removes_only_what_expired_and_keeps_the_guard_true(env):
    for sport in range(44000, 44010):
        fwd(env, UDP(sport=sport, dport=7) / Raw(b"s"))
    advance(env, 200 * S)
    for sport in range(44010, 44015):
        fwd(env, UDP(sport=sport, dport=7) / Raw(b"s"))
    advance(env, 200 * S)  # the first ten are 400 s idle, the last five 200 s
    rep = env.dp.sweep()
    assert (rep["removed"], rep["scanned"]) == (10, 15), rep
    assert rep["by_state"] == {"active": 10}
    left = env.dp.flows()
    assert sorted(f["env_port"] for f in left) == list(range(44010, 44015))
    assert all(f["live"] for f in left)
    for sport in range(44010, 44015):  # each remaining flow is still found by its probe
        assert fwd(env, UDP(sport=sport, dport=7) / Raw(b"s"))[2].get("fwd_established") == 1
    assert env.dp.sweep()["removed"] == 0


def test_flow_records_show_state_and_idle_time(env):
    fwd(env, TCP(sport=45000, dport=80, flags="S"))
    advance(env, 12 * S)
    (f,) = env.dp.flows()
    assert f["state"] == "syn_sent" and f["live"] and 11.9 <= f["idle_s"] <= 12.1
    assert env.dp.flow_states()["syn_sent"] == 1


def test_a_syn_with_rst_opens_nothing(env):
    got, _, d = fwd(env, TCP(sport=45010, dport=80, flags="SR"))
    assert (got, d.get("drop_tcp_no_flow"), d.get("fwd_new_flow")) == ("DROP", 1, None), d
    assert env.dp.flows() == []


def test_a_flow_opened_behind_an_entry_while_it_is_removed_is_never_lost(env):
    """The datapath keeps opening flows while user space removes entries (sweep, flush). Here a
    flow opens one port behind the entry at the very moment that entry is chosen for removal:
    its next packets must still find it, never open it a second time."""
    from eniplane.probe import probe_ports

    secret = env.dp.config()["port_secret"]
    first = {sp: probe_ports(secret, 2000, 2001, WORKER, VNI_TINY, ENV_IP, sp, DEST, 7, 17)[0]
             for sp in range(46000, 46100)}
    old = 46000
    assert _udp_tiny(env, old)[2].get("fwd_new_flow") == 1
    held = flow_port(env, old)
    late = next(sp for sp, p in first.items() if p == held and sp != old)  # probes it first
    assert env.dp.map("flow_guard").lookup(0)["holes"] == 0

    def doomed(key: dict, v: dict) -> bool:
        if v["env_port"] != old:
            return False
        got, out, d = _udp_tiny(env, late)  # opens now, one port behind `old`
        assert d.get("fwd_new_flow") == 1 and nat_port(out) != held, d
        return True

    def gone(stage: str, batch: list) -> None:  # `old` is deleted, the guard not yet recounted
        if stage == "reaped":
            got, _, d = _udp_tiny(env, late)
            assert (got, d.get("fwd_established")) == ("REDIRECT", 1), d

    env.dp._reap_hook = gone
    try:
        assert env.dp._remove_flows(doomed).removed == 1
    finally:
        env.dp._reap_hook = None
    for _ in range(3):
        got, _, d = _udp_tiny(env, late)
        assert (got, d.get("fwd_established")) == ("REDIRECT", 1), d
    assert [f["env_port"] for f in env.dp.flows()] == [late]
    assert env.dp.map("flow_guard").lookup(0)["holes"] == 1  # it sits behind an empty port


def test_a_sweep_gives_an_eni_back_what_the_lru_took(env):
    """An entry that goes without user space deleting it (the LRU evicts; here a direct delete
    stands for it) still counted against its ENI's limit until the next sweep recounts."""
    env.dp.set_eni(VNI_A, 1, 1, "10.0.1.4", 1024, 65535, max_flows=2)
    for sport in (47000, 47001):
        fwd(env, UDP(sport=sport, dport=7) / Raw(b"e"))
    f = flow(env, 47000, proto=17, dport=7)
    assert env.dp.map("flows").delete({"vpc_idx": 1, "proto": 17, "eni_addr": "10.0.1.4",
                                       "remote": SERVER, "eni_port": f["nat_port"],
                                       "remote_port": 7})
    env.dp.hot_invalidate()  # as a flush does: the flow's flow_hot slot stops too
    assert env.dp.eni_flow_entries()[VNI_A] == 2
    assert fwd(env, UDP(sport=47002, dport=7) / Raw(b"e"))[2].get("drop_flow_limit") == 1
    assert env.dp.sweep()["removed"] == 0
    assert env.dp.eni_flow_entries()[VNI_A] == 1
    assert fwd(env, UDP(sport=47002, dport=7) / Raw(b"e"))[2].get("fwd_new_flow") == 1
