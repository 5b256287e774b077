"""The node-wide IPv4 settings' control plane with no node: the State's operation, the store (rows
of the settings table; a store from before them reads the defaults), the file format's `ipv4:`
section, and the CLI's `ipv4 show` / `ipv4 set` with their exit codes."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
import yaml

from eniplane import ipv4
from eniplane.config import InvalidDocument, build_state, diff, export_doc, schema
from eniplane.errors import InvalidInput
from eniplane.model import State
from eniplane.store import SCHEMA_VERSION, Store

DEFAULTS = {"mss_clamp": True, "icmp_rate": 1000, "tunnel_gateway": "169.254.0.1"}
CHANGED = {"mss_clamp": False, "icmp_rate": 0, "tunnel_gateway": "10.255.0.1"}


def world() -> State:
    st = State()
    st.add_vpc("v", "10.0.0.0/16", "vpca", "10.0.0.1")
    st.add_subnet("s", "v", "10.0.1.0/24")
    st.add_sg("g", "v")
    st.attach_function("f", ["s"], ["g"])
    return st


# ---- the State -------------------------------------------------------------------------------
def test_defaults_are_ipv4_pys():
    assert State().ipv4 == DEFAULTS == ipv4.DEFAULTS
    assert State().ipv4 is not State().ipv4  # each State its own: no shared default dict


def test_set_ipv4_changes_some_and_returns_all():
    st = State()
    assert st.set_ipv4(icmp_rate=5) == {**DEFAULTS, "icmp_rate": 5}
    assert st.set_ipv4(mss_clamp=False, tunnel_gateway="10.255.0.1") == {
        "mss_clamp": False, "icmp_rate": 5, "tunnel_gateway": "10.255.0.1"}


@pytest.mark.parametrize("values,msg", [
    ({}, "no IPv4 setting given"),
    ({"icmp_rate": 7, "mss_clamp": "off"}, "mss_clamp must be true or false"),
    ({"icmp_rate": -1}, "icmp_rate must be a whole number"),
    ({"icmp_rate": 1 << 32}, "icmp_rate must be"),
    ({"icmp_rate": True}, "icmp_rate must be"),
    ({"tunnel_gateway": "nope"}, "tunnel_gateway must be an IPv4 address"),
    ({"tunnel_gateway": "0.0.0.0"}, "cannot be the source of an ICMP message"),
    ({"tunnel_gateway": "127.0.0.1"}, "cannot be the source"),
    ({"tunnel_gateway": "239.1.1.1"}, "cannot be the source"),
    ({"tunnel_gateway": "255.255.255.255"}, "cannot be the source"),
    ({"icmp_ratee": 3}, "unknown IPv4 setting 'icmp_ratee'"),
])
def test_set_ipv4_is_all_or_nothing(values, msg):
    st = State()
    with pytest.raises(InvalidInput, match=msg):
        st.set_ipv4(**values)
    assert st.ipv4 == DEFAULTS  # the valid half (icmp_rate 7) was not applied either


# ---- the store -------------------------------------------------------------------------------
def test_settings_survive_the_store_as_integer_rows(tmp_path):
    st = world()
    st.set_ipv4(**CHANGED)
    with Store("n", tmp_path / "s.db") as s, s.transaction() as cur:
        cur.__dict__.update(st.copy().__dict__)
    with Store("n", tmp_path / "s.db") as s:
        back = s.load()
        rows = dict(s.db.execute("SELECT key, value FROM settings WHERE key LIKE 'ipv4_%'"))
    assert back == st and back.ipv4 == CHANGED
    assert Store.peek("n", tmp_path / "s.db").ipv4 == CHANGED
    # 10.255.0.1 as the integer the settings table holds; False as 0
    assert rows == {"ipv4_mss_clamp": 0, "ipv4_icmp_rate": 0, "ipv4_tunnel_gateway": 0x0AFF0001}


# A schema 3 store as the eniplane before the IPv4 settings wrote it: timeouts and the flow limit
# in the settings table, nothing else.
SCHEMA_3_BEFORE = """
INSERT INTO vpcs VALUES ('v', 1, '10.0.0.0/16', 'vpca', '10.0.0.1', NULL);
INSERT INTO settings VALUES ('timeout_udp', 30);
INSERT INTO settings VALUES ('flows_per_eni', 500);
"""


def test_a_store_from_before_the_settings_reads_the_defaults(tmp_path):
    path = tmp_path / "s.db"
    Store("n", path).close()  # the schema, empty
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_3_BEFORE)
    db.commit()
    db.close()
    st = Store.peek("n", path)
    assert st.ipv4 == DEFAULTS and st.timeouts["udp"] == 30 and st.flows_per_eni == 500
    with Store("n", path) as s, s.transaction() as cur:  # a writer keeps the rest as it was
        cur.set_ipv4(icmp_rate=9)
    back = Store.peek("n", path)
    assert back.ipv4 == {**DEFAULTS, "icmp_rate": 9} and back.timeouts["udp"] == 30


def test_a_schema_2_store_upgrades_with_the_default_settings(tmp_path):
    from test_lifecycle import make_v2, schema_of

    path = tmp_path / "s.db"
    make_v2(path)
    assert Store.peek("n", path).ipv4 == DEFAULTS and schema_of(path) == "2"
    with Store("n", path) as s, s.transaction() as st:
        st.set_ipv4(mss_clamp=False)
    assert schema_of(path) == str(SCHEMA_VERSION)
    back = Store.peek("n", path)
    assert back.ipv4 == {**DEFAULTS, "mss_clamp": False} and "eni-old" in back.enis


# ---- the file format -------------------------------------------------------------------------
def test_export_then_apply_carries_the_settings():
    st = world()
    st.set_ipv4(**CHANGED)
    doc = yaml.safe_load(yaml.safe_dump(export_doc(st), sort_keys=False))
    assert doc["ipv4"] == CHANGED
    again = build_state(doc, st)
    assert diff(st, again) == [] and again == st
    assert build_state(doc, State()).ipv4 == CHANGED  # another node: the same settings


def test_a_file_without_ipv4_means_the_defaults_and_diff_names_each_setting():
    st = world()
    st.set_ipv4(**CHANGED)
    doc = export_doc(st)
    del doc["ipv4"]
    new = build_state(doc, st)
    assert new.ipv4 == DEFAULTS and st.ipv4 == CHANGED  # planning leaves the current state
    assert diff(st, new) == [{"op": "change", "kind": "ipv4", "id": k}
                             for k in ("mss_clamp", "icmp_rate", "tunnel_gateway")]


def test_yaml_on_and_off_and_partial_sections():
    doc = {**export_doc(world()), **yaml.safe_load("ipv4: {mss_clamp: off}")}
    assert build_state(doc, State()).ipv4 == {**DEFAULTS, "mss_clamp": False}
    doc = {**export_doc(world()), "ipv4": {"icmp_rate": 0}}
    assert build_state(doc, State()).ipv4 == {**DEFAULTS, "icmp_rate": 0}


@pytest.mark.parametrize("value,line", [
    ({"mss_clamp": "no"}, "ipv4.mss_clamp: Input should be a valid boolean"),
    ({"mss_clamp": 1}, "ipv4.mss_clamp: Input should be a valid boolean"),
    ({"icmp_rate": -1}, "ipv4.icmp_rate: Input should be greater than or equal to 0"),
    ({"icmp_rate": 1 << 32}, "ipv4.icmp_rate: Input should be less than or equal to 4294967295"),
    ({"icmp_rate": "10"}, "ipv4.icmp_rate: Input should be a valid integer"),
    ({"icmp_rate": True}, "ipv4.icmp_rate: Input should be a valid integer"),
    ({"icmp_rte": 10}, "ipv4: unknown key 'icmp_rte' (did you mean 'icmp_rate'?)"),
    (5, "ipv4: expected a mapping, got a number"),
])
def test_bad_shapes_in_a_file(value, line):
    with pytest.raises(InvalidDocument) as e:
        build_state({**export_doc(world()), "ipv4": value}, State())
    assert e.value.problems == [line]


@pytest.mark.parametrize("gateway,msg", [
    ("10.0.0", r"^ipv4: tunnel_gateway must be an IPv4 address, not '10.0.0'$"),
    ("224.0.0.5", r"^ipv4: tunnel_gateway 224.0.0.5 cannot be the source of an ICMP message"),
])
def test_a_bad_tunnel_gateway_in_a_file_is_the_states_to_refuse(gateway, msg):
    with pytest.raises(InvalidInput, match=msg):
        build_state({**export_doc(world()), "ipv4": {"tunnel_gateway": gateway}}, State())


def test_schema_shows_the_settings_with_their_defaults_and_bounds():
    p = schema()["$defs"]["Ipv4Doc"]["properties"]
    assert set(p) == set(ipv4.NAMES)
    assert (p["mss_clamp"]["type"], p["mss_clamp"]["default"]) == ("boolean", True)
    assert (p["icmp_rate"]["minimum"], p["icmp_rate"]["maximum"]) == (0, ipv4.U32_MAX)
    assert p["icmp_rate"]["default"] == ipv4.DEFAULT_ICMP_RATE
    assert (p["tunnel_gateway"]["format"], p["tunnel_gateway"]["default"]) == ("ipv4",
                                                                               "169.254.0.1")
    assert schema()["$defs"]["Ipv4Doc"]["additionalProperties"] is False


# ---- the command line, node down -------------------------------------------------------------
def said(text: str) -> str:
    """Click's message without the box and line breaks rich draws round it."""
    return " ".join(re.sub(r"[│╭╮╰╯─┃━┏┓┗┛]", " ", text).split())


def shown(cli) -> dict:
    return json.loads(cli("ipv4", "show", "-o", "json").stdout)


def test_ipv4_show_and_set(cli):
    assert shown(cli) == DEFAULTS
    table = said(cli("ipv4", "show").stdout)
    assert "mss_clamp on" in table and "icmp_rate 1000" in table
    r = cli("ipv4", "set", "--mss-clamp", "off", "--icmp-rate", "0")
    assert "not up" in r.stderr and "mss_clamp off, icmp_rate 0" in r.stderr
    assert shown(cli) == {**DEFAULTS, "mss_clamp": False, "icmp_rate": 0}
    cli("ipv4", "set", "-g", "10.255.0.1", "-m", "on", "-r", "25")
    assert shown(cli) == {"mss_clamp": True, "icmp_rate": 25, "tunnel_gateway": "10.255.0.1"}


@pytest.mark.parametrize("args,msg", [
    ([], "give at least one of --mss-clamp, --icmp-rate, --tunnel-gateway"),
    (["--mss-clamp", "maybe"], "Invalid value for '--mss-clamp' / '-m'"),
    (["--mss-clamp", "true"], "Invalid value for '--mss-clamp' / '-m'"),
    (["--icmp-rate", "-1"], "Invalid value for '--icmp-rate' / '-r': icmp_rate must be a whole "
                            "number of messages per second per CPU from 0 (none) to 4294967295"),
    (["--icmp-rate", "4294967296"], "Invalid value for '--icmp-rate' / '-r'"),
    (["--icmp-rate", "fast"], "Invalid value for '--icmp-rate' / '-r'"),
    (["--tunnel-gateway", "10.0.0"], "Invalid value for '--tunnel-gateway' / '-g': "
                                     "tunnel_gateway must be an IPv4 address"),
    (["--tunnel-gateway", "0.0.0.0"], "Invalid value for '--tunnel-gateway' / '-g': "
                                      "tunnel_gateway 0.0.0.0 cannot be the source"),
    # a valid value next to a bad one is not applied either
    (["--icmp-rate", "5", "--tunnel-gateway", "127.0.0.1"], "'--tunnel-gateway' / '-g'"),
])
def test_ipv4_set_refuses_with_exit_2_and_changes_nothing(cli, args, msg):
    r = cli("ipv4", "set", *args, code=2)
    assert msg in said(r.stderr)
    assert shown(cli) == DEFAULTS


def test_export_apply_round_trip_through_the_cli(cli, tmp_path):
    cli("ipv4", "set", "--mss-clamp", "off", "--tunnel-gateway", "10.255.0.1")
    f = tmp_path / "c.yaml"
    cli("export", "--file", str(f))
    doc = yaml.safe_load(f.read_text())
    assert doc["ipv4"] == {**DEFAULTS, "mss_clamp": False, "tunnel_gateway": "10.255.0.1"}
    assert json.loads(cli("apply", "-f", str(f), "-o", "json").stdout)["changes"] == []
    doc["ipv4"]["icmp_rate"] = 3
    f.write_text(yaml.safe_dump(doc))
    changes = json.loads(cli("apply", "-f", str(f), "-o", "json").stdout)["changes"]
    assert changes == [{"op": "change", "kind": "ipv4", "id": "icmp_rate"}]
    assert shown(cli)["icmp_rate"] == 3
    doc["ipv4"]["tunnel_gateway"] = "255.255.255.255"
    f.write_text(yaml.safe_dump(doc))
    r = cli("apply", "-f", str(f), code=1)  # a file's contents: InvalidInput, as for the rest
    assert "c.yaml: ipv4: tunnel_gateway 255.255.255.255 cannot be the source" in r.stderr
    assert shown(cli)["tunnel_gateway"] == "10.255.0.1"
    assert "ipv4" in json.loads(cli("apply", "--schema").stdout)["properties"]
