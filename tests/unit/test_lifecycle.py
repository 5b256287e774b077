"""The flow lifecycle's control plane with no node: state names and timeouts from state bits,
the settings in the State, the store (schema 3 and the upgrade from 2), the file format, and the
CLI's `timeouts`, `limits` and `eni set --max-flows` with their exit codes."""

from __future__ import annotations

import json
import re
import socket
import sqlite3

import pytest
import yaml

from eniplane import lifecycle as lc
from eniplane.config import InvalidDocument, build_state, diff, export_doc, schema
from eniplane.errors import InvalidInput, NotFound
from eniplane.model import State
from eniplane.store import SCHEMA_VERSION, Store

S = lc.NSEC_PER_SEC
TCP, UDP, ICMP = socket.IPPROTO_TCP, socket.IPPROTO_UDP, socket.IPPROTO_ICMP
SYN, SYNACK, EST = lc.FLOW_S_SYN, lc.FLOW_S_SYNACK, lc.FLOW_S_EST
FIN_OUT, FIN_IN, RST = lc.FLOW_S_FIN_OUT, lc.FLOW_S_FIN_IN, lc.FLOW_S_RST
HANDSHAKE = SYN | SYNACK | EST


# ---- pure functions --------------------------------------------------------------------------
@pytest.mark.parametrize("proto,bits,name,timeout", [
    (TCP, 0, "syn_sent", "tcp_transitory"),
    (TCP, SYN, "syn_sent", "tcp_transitory"),
    (TCP, SYN | SYNACK, "syn_received", "tcp_transitory"),
    (TCP, HANDSHAKE, "established", "tcp_established"),
    (TCP, HANDSHAKE | FIN_OUT, "fin_wait", "tcp_transitory"),
    (TCP, HANDSHAKE | FIN_IN, "fin_wait", "tcp_transitory"),
    (TCP, HANDSHAKE | FIN_OUT | FIN_IN, "closed", "tcp_transitory"),
    (TCP, HANDSHAKE | RST, "reset", "tcp_transitory"),
    (TCP, SYN | RST, "reset", "tcp_transitory"),
    (TCP, HANDSHAKE | FIN_OUT | FIN_IN | RST, "reset", "tcp_transitory"),
    (UDP, 0, "active", "udp"),
    (ICMP, 0, "active", "icmp"),
])
def test_state_names_and_the_timeout_that_judges_them(proto, bits, name, timeout):
    assert lc.state_name(proto, bits) == name
    assert lc.timeout_name(proto, bits) == timeout
    assert lc.timeout_ns(proto, bits, {**lc.DEFAULT_TIMEOUTS, timeout: 7}) == 7 * S


def test_expiry_is_strictly_after_the_timeout():
    t = {**lc.DEFAULT_TIMEOUTS, "udp": 30}
    now = 1000 * S
    assert lc.is_live(UDP, 0, now - 30 * S, now, t)       # idle == timeout: still live
    assert not lc.is_live(UDP, 0, now - 30 * S - 1, now, t)
    assert lc.is_expired(UDP, 0, now - 30 * S - 1, now, t)
    assert not lc.is_expired(UDP, 0, now - 30 * S, now, t)


def test_live_needs_a_last_seen_time_and_no_reset():
    t = lc.DEFAULT_TIMEOUTS
    now = 1000 * S
    assert not lc.is_live(UDP, 0, 0, now, t)            # never seen: a claimed, unfinished entry
    assert lc.is_live(TCP, HANDSHAKE, now, now, t)
    assert not lc.is_live(TCP, HANDSHAKE | RST, now, now, t)   # reset: not live however recent
    assert lc.is_live(TCP, HANDSHAKE, now + S, now, t)  # a CPU's clock ahead of ours: not idle
    assert not lc.is_expired(TCP, HANDSHAKE | RST, now, now, t)  # reset, but keeps its port


def test_established_and_transitory_timeouts_differ():
    t = {**lc.DEFAULT_TIMEOUTS, "tcp_established": 100, "tcp_transitory": 10}
    now = 1000 * S
    assert lc.is_live(TCP, HANDSHAKE, now - 50 * S, now, t)
    assert not lc.is_live(TCP, HANDSHAKE | FIN_OUT, now - 50 * S, now, t)


@pytest.mark.parametrize("value,msg", [
    (0, "0 s is outside 1-4294967295"), (-5, "outside"), (1 << 32, "outside"),
    (1.5, "not a whole number"), ("30", "not a whole number"), (True, "not a whole number"),
])
def test_check_seconds(value, msg):
    with pytest.raises(InvalidInput, match=msg):
        lc.check_seconds("timeout udp", value)


def test_validate_timeouts_names_an_unknown_one():
    with pytest.raises(InvalidInput, match="unknown timeout 'tcp'"):
        lc.validate_timeouts({"tcp": 5})
    with pytest.raises(InvalidInput, match="timeout udp: 0 s is outside"):
        lc.validate_timeouts({"udp": 0})
    assert lc.validate_timeouts({"udp": 1}) == {"udp": 1}


def test_flow_limits_take_zero_only_where_it_means_something():
    assert lc.check_flow_limit("x", 0, zero="the node default") == 0
    with pytest.raises(InvalidInput, match="0 is outside 1-"):
        lc.check_flow_limit("x", 0)
    with pytest.raises(InvalidInput, match=r"outside 0-4294967295 \(0: the node default\)"):
        lc.check_flow_limit("x", -1, zero="the node default")


# ---- the State -------------------------------------------------------------------------------
def world() -> State:
    st = State()
    st.add_vpc("v", "10.0.0.0/16", "vpca", "10.0.0.1")
    st.add_subnet("s", "v", "10.0.1.0/24")
    st.add_subnet("s2", "v", "10.0.2.0/24")
    st.add_sg("g", "v")
    st.add_sg("h", "v")
    st.add_rule("g", st.make_rule("egress", "tcp", "80", "10.0.0.0/16"))
    st.attach_function("f", ["s"], ["g"])
    st.attach_function("f2", ["s2"], ["g", "h"])
    return st


def eni_of(st: State, subnet: str):
    (e,) = [e for e in st.enis.values() if e.subnet == subnet]
    return e


def test_defaults():
    st = State()
    assert st.timeouts == {"tcp_established": 350, "tcp_transitory": 240, "udp": 350, "icmp": 60}
    assert st.flows_per_eni == 65000


def test_set_timeouts_is_all_or_nothing():
    st = State()
    assert st.set_timeouts(udp=30)["udp"] == 30
    with pytest.raises(InvalidInput, match="timeout icmp"):
        st.set_timeouts(tcp_established=5, icmp=0)
    assert st.timeouts["tcp_established"] == 350  # the valid half was not applied either
    with pytest.raises(InvalidInput, match="no timeout given"):
        st.set_timeouts()


def test_eni_limit_falls_back_to_the_node_and_goes_with_the_eni():
    st = world()
    e = eni_of(st, "s")
    assert st.eni_flow_limit(e) == 65000
    st.set_flows_per_eni(1000)
    assert st.eni_flow_limit(e) == 1000
    st.set_eni_max_flows(e.id, 10)
    assert st.eni_flow_limit(e) == 10 and st.eni_flow_limit(eni_of(st, "s2")) == 1000
    st.detach_function("f")
    assert e.id not in st.enis
    st.attach_function("f", ["s"], ["g"])  # the same pair again: a new ENI, the node's limit
    assert eni_of(st, "s").max_flows == 0
    with pytest.raises(NotFound, match="ENI eni-nope does not exist"):
        st.set_eni_max_flows("eni-nope", 5)
    with pytest.raises(InvalidInput):
        st.set_flows_per_eni(0)


# ---- the store -------------------------------------------------------------------------------
def test_settings_and_eni_limits_survive_the_store(tmp_path):
    st = world()
    st.set_timeouts(tcp_established=20, icmp=3)
    st.set_flows_per_eni(500)
    st.set_eni_max_flows(eni_of(st, "s").id, 7)
    with Store("n", tmp_path / "s.db") as s, s.transaction() as cur:
        cur.__dict__.update(st.copy().__dict__)
    with Store("n", tmp_path / "s.db") as s:
        back = s.load()
    assert back == st and back.timeouts["icmp"] == 3 and eni_of(back, "s").max_flows == 7
    assert Store.peek("n", tmp_path / "s.db") == st


SCHEMA_2 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE vpcs (id TEXT PRIMARY KEY, idx INTEGER NOT NULL UNIQUE, cidr TEXT NOT NULL,
    iface TEXT NOT NULL, gateway TEXT NOT NULL, gateway_mac TEXT);
CREATE TABLE subnets (id TEXT PRIMARY KEY, vpc TEXT NOT NULL, cidr TEXT NOT NULL);
CREATE TABLE sgs (id TEXT PRIMARY KEY, vpc TEXT NOT NULL);
CREATE TABLE sg_rules (sg TEXT NOT NULL, pos INTEGER NOT NULL, direction TEXT NOT NULL,
    proto TEXT NOT NULL, port_lo INTEGER NOT NULL, port_hi INTEGER NOT NULL, cidr TEXT NOT NULL,
    PRIMARY KEY (sg, pos));
CREATE TABLE workers (ip TEXT PRIMARY KEY, mac TEXT);
CREATE TABLE enis (id TEXT PRIMARY KEY, subnet TEXT NOT NULL, sgs TEXT NOT NULL,
    address TEXT NOT NULL, vni INTEGER NOT NULL UNIQUE, idx INTEGER NOT NULL UNIQUE,
    port_lo INTEGER NOT NULL, port_hi INTEGER NOT NULL);
CREATE TABLE functions (name TEXT PRIMARY KEY, subnets TEXT NOT NULL, sgs TEXT NOT NULL,
    workers TEXT NOT NULL DEFAULT '');
INSERT INTO meta VALUES ('schema', '2');
INSERT INTO vpcs VALUES ('v', 1, '10.0.0.0/16', 'vpca', '10.0.0.1', NULL);
INSERT INTO subnets VALUES ('s', 'v', '10.0.1.0/24');
INSERT INTO sgs VALUES ('g', 'v');
INSERT INTO enis VALUES ('eni-old', 's', 'g', '10.0.1.4', 4096, 1, 1024, 65535);
INSERT INTO functions VALUES ('f', 's', 'g', '');
"""


def make_v2(path) -> None:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_2)
    db.commit()
    db.close()


def schema_of(path) -> str:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0]
    finally:
        db.close()


def test_a_schema_2_store_is_read_upgraded_without_being_written(tmp_path):
    path = tmp_path / "s.db"
    make_v2(path)
    st = Store.peek("n", path)
    assert st.enis["eni-old"].max_flows == 0 and st.timeouts == lc.DEFAULT_TIMEOUTS
    assert st.flows_per_eni == 65000 and st.functions["f"].sgs == ["g"]
    assert schema_of(path) == "2"  # a listing after an upgrade writes nothing


def test_a_writer_upgrades_a_schema_2_store_in_place(tmp_path):
    path = tmp_path / "s.db"
    make_v2(path)
    with Store("n", path) as s:
        with s.transaction() as st:
            st.set_eni_max_flows("eni-old", 9)
            st.set_timeouts(udp=5)
    assert schema_of(path) == str(SCHEMA_VERSION) == "4"
    with Store("n", path) as s:
        back = s.load()
    assert back.enis["eni-old"].max_flows == 9 and back.timeouts["udp"] == 5


def test_a_newer_store_is_refused(tmp_path):
    path = tmp_path / "s.db"
    with Store("n", path) as s:
        s.db.execute("UPDATE meta SET value='5' WHERE key='schema'")
    with pytest.raises(Exception, match="has schema 5; this eniplane knows 4"):
        Store.peek("n", path)


# ---- the file format -------------------------------------------------------------------------
def test_export_then_apply_carries_settings_and_eni_limits():
    st = world()
    st.set_timeouts(tcp_transitory=4, udp=9)
    st.set_flows_per_eni(1234)
    st.set_eni_max_flows(eni_of(st, "s2").id, 77)
    doc = yaml.safe_load(yaml.safe_dump(export_doc(st), sort_keys=False))
    assert doc["timeouts"] == {"tcp_established": 350, "tcp_transitory": 4, "udp": 9, "icmp": 60}
    assert doc["limits"] == {"flows_per_eni": 1234}
    assert doc["enis"] == [{"subnet": "s2", "security_groups": ["g", "h"], "max_flows": 77}]
    again = build_state(doc, st)
    assert diff(st, again) == [] and again == st
    fresh = build_state(doc, State())  # another node: new ENI ids, the same limits
    assert eni_of(fresh, "s2").max_flows == 77 and fresh.timeouts == st.timeouts


def test_a_file_without_settings_means_the_defaults():
    st = world()
    st.set_timeouts(udp=9)
    st.set_flows_per_eni(1234)
    e = eni_of(st, "s")
    st.set_eni_max_flows(e.id, 5)
    doc = export_doc(st)
    for k in ("timeouts", "limits", "enis"):
        del doc[k]
    new = build_state(doc, st)
    assert new.timeouts == lc.DEFAULT_TIMEOUTS and new.flows_per_eni == 65000
    assert new.enis[e.id].max_flows == 0
    assert st.enis[e.id].max_flows == 5  # the current state is not touched by planning
    assert diff(st, new) == [{"op": "change", "kind": "enis", "id": e.id},
                             {"op": "change", "kind": "timeouts", "id": "udp"},
                             {"op": "change", "kind": "limits", "id": "flows_per_eni"}]


def test_partial_timeouts_fill_in_defaults():
    doc = {**export_doc(world()), "timeouts": {"icmp": 2}}
    assert build_state(doc, State()).timeouts == {**lc.DEFAULT_TIMEOUTS, "icmp": 2}


@pytest.mark.parametrize("key,value,line", [
    ("timeouts", {"udp": 0}, "timeouts.udp: Input should be greater than or equal to 1"),
    ("timeouts", {"udp": "30"}, "timeouts.udp: Input should be a valid integer"),
    ("timeouts", {"udp": True}, "timeouts.udp: Input should be a valid integer"),
    ("timeouts", {"udp": 1 << 32}, "timeouts.udp: Input should be less than or equal to "
                                   "4294967295"),
    ("limits", {"flows_per_eni": 0}, "limits.flows_per_eni: Input should be greater than or "
                                     "equal to 1"),
    ("enis", [{"subnet": "s", "security_groups": ["g"], "max_flows": -1}],
     "enis[0].max_flows: Input should be greater than or equal to 0"),
    ("enis", [{"subnet": "s", "security_groups": ["g"]}], "enis[0]: missing required key "
                                                          "'max_flows'"),
])
def test_bad_settings_in_a_file(key, value, line):
    with pytest.raises(InvalidDocument) as e:
        build_state({**export_doc(world()), key: value}, State())
    assert e.value.problems == [line]


@pytest.mark.parametrize("enis,msg", [
    ([{"subnet": "s", "security_groups": ["h"], "max_flows": 5}],
     r"enis\[0\]: no function uses subnet s with security groups h: an ENI exists only while one "
     r"does"),
    ([{"subnet": "s", "security_groups": ["g"], "max_flows": 5},
      {"subnet": "s", "security_groups": ["g", "g"], "max_flows": 6}],
     r"enis\[1\]: subnet s with security groups g is declared twice"),
])
def test_an_eni_limit_names_an_eni_some_function_derives(enis, msg):
    with pytest.raises(InvalidInput, match=msg):
        build_state({**export_doc(world()), "enis": enis}, State())


def test_group_order_does_not_matter_for_an_eni_entry():
    doc = {**export_doc(world()),
           "enis": [{"subnet": "s2", "security_groups": ["h", "g"], "max_flows": 3}]}
    assert eni_of(build_state(doc, State()), "s2").max_flows == 3


def test_schema_shows_the_settings_with_their_bounds():
    s = schema()
    t = s["$defs"]["TimeoutsDoc"]["properties"]
    assert set(t) == set(lc.DEFAULT_TIMEOUTS)
    assert t["udp"]["minimum"] == 1 and t["udp"]["default"] == 350
    assert s["$defs"]["LimitsDoc"]["properties"]["flows_per_eni"]["default"] == 65000
    assert s["$defs"]["EniDoc"]["properties"]["max_flows"]["minimum"] == 0


# ---- the command line, node down -------------------------------------------------------------
def said(text: str) -> str:
    """Click's message without the box and line breaks rich draws round it."""
    return " ".join(re.sub(r"[│╭╮╰╯─┃━┏┓┗┛]", " ", text).split())


def test_timeouts_show_and_set(cli):
    assert json.loads(cli("timeouts", "show", "-o", "json").stdout) == {
        "tcp_established": 350, "tcp_transitory": 240, "udp": 350, "icmp": 60}
    r = cli("timeouts", "set", "--udp", "30", "--tcp-established", "20")
    assert "not up" in r.stderr and "udp 30 s" in r.stderr
    assert json.loads(cli("timeouts", "show", "-o", "json").stdout) == {
        "tcp_established": 20, "tcp_transitory": 240, "udp": 30, "icmp": 60}
    shown = cli("timeouts", "show").stdout
    assert "tcp_transitory" in shown and "240" in shown


@pytest.mark.parametrize("args,msg", [
    (["--udp", "0"], "Invalid value for '--udp' / '-u': 0 s is outside 1-4294967295"),
    (["--icmp", "-3"], "outside 1-4294967295"),
    (["--tcp-transitory", "1.5"], "Invalid value for '--tcp-transitory' / '-t'"),
    (["--tcp-established", "x"], "Invalid value for '--tcp-established' / '-e'"),
    (["--udp", "4294967296"], "outside 1-4294967295"),
    ([], "give at least one of --tcp-established, --tcp-transitory, --udp, --icmp"),
])
def test_timeouts_set_refuses_bad_values_with_exit_2(cli, args, msg):
    r = cli("timeouts", "set", *args, code=2)
    assert msg in said(r.stderr)
    assert json.loads(cli("timeouts", "show", "-o", "json").stdout) == lc.DEFAULT_TIMEOUTS


def test_limits_show_and_set(cli):
    assert json.loads(cli("limits", "show", "-o", "json").stdout) == {"flows_per_eni": 65000}
    cli("limits", "set", "--flows-per-eni", "100")
    assert json.loads(cli("limits", "show", "-o", "json").stdout) == {"flows_per_eni": 100}
    r = cli("limits", "set", "--flows-per-eni", "0", code=2)
    assert "0 is outside 1-4294967295" in said(r.stderr)
    assert "Missing option '--flows-per-eni'" in said(cli("limits", "set", code=2).stderr)


def setup_eni(cli) -> str:
    cli("vpc", "add", "v", "--cidr", "10.0.0.0/16", "--iface", "vpca", "--gateway", "10.0.0.1")
    cli("subnet", "add", "s", "--vpc", "v", "--cidr", "10.0.1.0/24")
    cli("sg", "add", "g", "--vpc", "v")
    r = cli("function", "attach", "f", "--subnet", "s", "--sg", "g", "-o", "json")
    return json.loads(r.stdout)["enis"][0]["id"]


def test_eni_set_max_flows_and_the_effective_limit(cli):
    eni = setup_eni(cli)
    (row,) = json.loads(cli("eni", "list", "-o", "json").stdout)
    assert (row["max_flows"], row["flow_limit"], row["flow_entries"]) == (0, 65000, None)
    cli("eni", "set", eni, "--max-flows", "10")
    shown = json.loads(cli("eni", "show", eni, "-o", "json").stdout)
    assert (shown["max_flows"], shown["flow_limit"], shown["flow_entries"]) == (10, 10, None)
    cli("limits", "set", "--flows-per-eni", "500")
    cli("eni", "set", eni, "--max-flows", "0")  # back to the node's
    (row,) = json.loads(cli("eni", "list", "-o", "json").stdout)
    assert (row["max_flows"], row["flow_limit"]) == (0, 500)
    assert "- / 500" in said(cli("eni", "list").stdout)
    assert "max_flows: 0" not in cli("export").stdout  # only real overrides are exported


def test_eni_set_refuses(cli):
    eni = setup_eni(cli)
    assert "'--max-flows' / '-m': -1 is outside 0-4294967295 (0: the node default)" in \
        said(cli("eni", "set", eni, "--max-flows", "-1", code=2).stderr)
    assert "ENI eni-nope does not exist" in \
        cli("eni", "set", "eni-nope", "--max-flows", "5", code=1).stderr
    assert "Missing option '--max-flows'" in said(cli("eni", "set", eni, code=2).stderr)


def test_export_apply_round_trip_through_the_cli(cli, tmp_path):
    eni = setup_eni(cli)
    cli("timeouts", "set", "--icmp", "5")
    cli("limits", "set", "--flows-per-eni", "42")
    cli("eni", "set", eni, "--max-flows", "9")
    f = tmp_path / "c.yaml"
    cli("export", "--file", str(f))
    doc = yaml.safe_load(f.read_text())
    assert doc["timeouts"]["icmp"] == 5 and doc["limits"] == {"flows_per_eni": 42}
    assert doc["enis"] == [{"subnet": "s", "security_groups": ["g"], "max_flows": 9}]
    assert json.loads(cli("apply", "-f", str(f), "-o", "json").stdout)["changes"] == []
    doc["timeouts"]["icmp"] = 6
    doc["enis"][0]["max_flows"] = 0
    f.write_text(yaml.safe_dump(doc))
    changes = json.loads(cli("apply", "-f", str(f), "-o", "json").stdout)["changes"]
    assert changes == [{"op": "change", "kind": "enis", "id": eni},
                       {"op": "change", "kind": "timeouts", "id": "icmp"}]
    assert json.loads(cli("timeouts", "show", "-o", "json").stdout)["icmp"] == 6
    doc["timeouts"]["icmp"] = 0
    f.write_text(yaml.safe_dump(doc))
    r = cli("apply", "-f", str(f), code=1)  # a file's contents: InvalidInput, as for the rest
    assert "timeouts.icmp: Input should be greater than or equal to 1" in r.stderr
    assert set(json.loads(cli("apply", "--schema").stdout)["properties"]) >= {
        "timeouts", "limits", "enis"}


def test_flows_all_belongs_to_the_list(cli):
    r = cli("flows", "--all", "sweep", code=2)
    assert "--all applies to the flow list, not to `flows sweep`" in r.stderr
    assert "node unit is not up" in cli("flows", "sweep", code=1).stderr
