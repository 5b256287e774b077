"""The parameters `up` was given, kept in the store for the agent: checked like every setting,
stored and read back (none stored reads as empty), carried by export and `apply -f`, and kept
when a file has no `node:` section."""

from __future__ import annotations

import pytest

from eniplane import config
from eniplane.errors import InvalidInput
from eniplane.loader import DEFAULT_MAX_FLOWS
from eniplane.model import State
from eniplane.store import Store

PARAMS = {"fabric_if": "fab0", "fabric_ip": "100.64.0.1", "netns": "ep1-node", "mode": "auto",
          "max_flows": 4096}


def test_set_node_fills_defaults_and_checks_each_parameter():
    st = State()
    assert st.node == {}
    assert st.set_node(fabric_if="eth1", fabric_ip="10.1.2.3") == {
        "fabric_if": "eth1", "fabric_ip": "10.1.2.3", "netns": None, "mode": "auto",
        "max_flows": DEFAULT_MAX_FLOWS}
    for bad, match in (({"fabric_ip": "1.2.3.4"}, "fabric_if is required"),
                       ({**PARAMS, "fabric_ip": "nope"}, "fabric_ip must be an IPv4"),
                       ({**PARAMS, "mode": "fast"}, "mode must be one of"),
                       ({**PARAMS, "max_flows": 0}, "max_flows must be"),
                       ({**PARAMS, "fabric_if": "a/b"}, "fabric_if must be"),
                       ({**PARAMS, "colour": 1}, "unknown node parameter 'colour'")):
        before = dict(st.node)
        with pytest.raises(InvalidInput, match=match):
            st.set_node(**bad)
        assert st.node == before


def test_the_store_keeps_them_and_an_empty_store_has_none(tmp_path):
    path = tmp_path / "s.db"
    assert Store.peek("n", path).node == {}
    with Store("n", path) as s, s.transaction() as st:
        st.set_node(**{**PARAMS, "netns": None})
    back = Store.peek("n", path)
    assert back.node == {**PARAMS, "netns": None}
    with Store("n", path) as s, s.transaction() as st:
        st.set_node(**PARAMS)
    assert Store.peek("n", path).node == PARAMS


def test_export_and_apply_carry_them_and_a_file_without_them_keeps_them():
    st = State()
    st.set_node(**PARAMS)
    doc = config.export_doc(st)
    assert doc["node"] == PARAMS
    assert config.build_state(doc, State()).node == PARAMS
    assert config.diff(State(), config.build_state(doc, State())) == [
        {"op": "change", "kind": "node", "id": k} for k in PARAMS]
    del doc["node"]
    assert config.build_state(doc, st).node == PARAMS  # kept
    assert "node" not in config.export_doc(State())
    bad = {**config.export_doc(st), "node": {**PARAMS, "mode": "turbo"}}
    with pytest.raises(InvalidInput, match="node: mode must be one of"):
        config.build_state(bad, st)
