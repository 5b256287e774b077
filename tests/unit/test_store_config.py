"""SQLite store round trips and rollbacks; export then apply changes nothing."""

from __future__ import annotations

import pytest
import yaml

from eniplane.config import build_state, diff, export_doc
from eniplane.model import State
from eniplane.store import Store


def sample() -> State:
    st = State()
    st.add_vpc("vpc-a", "10.0.0.0/16", "vpca", "10.0.0.1")
    st.add_vpc("vpc-b", "10.0.0.0/16", "vpcb", "10.0.0.1")
    st.add_subnet("sa", "vpc-a", "10.0.1.0/24")
    st.add_subnet("sb", "vpc-b", "10.0.1.0/24")
    st.add_sg("ga", "vpc-a")
    st.add_sg("gb", "vpc-b")
    st.add_rule("ga", st.make_rule("egress", "tcp", "80-81", "10.0.0.0/16"))
    st.add_rule("ga", st.make_rule("ingress", "icmp", None, "0.0.0.0/0"))
    st.add_worker("100.64.0.11")
    st.attach_function("f1", ["sa"], ["ga"])
    st.attach_function("f2", ["sa"], ["ga"])
    st.attach_function("f3", ["sb"], ["gb"])
    return st


def test_store_round_trip(tmp_path):
    st = sample()
    with Store("n", tmp_path / "s.db") as s:
        with s.transaction() as cur:
            cur.__dict__.update(st.copy().__dict__)
    with Store("n", tmp_path / "s.db") as s:  # a restart of the store
        assert s.load() == st


def test_failed_transaction_changes_nothing(tmp_path):
    with Store("n", tmp_path / "s.db") as s:
        with s.transaction() as cur:
            cur.add_worker("1.1.1.1")
        with pytest.raises(RuntimeError):
            with s.transaction() as cur:
                cur.add_worker("2.2.2.2")
                raise RuntimeError("reconcile failed")
        assert s.load().workers == {"1.1.1.1"}


def test_export_then_apply_is_a_no_op():
    st = sample()
    doc = yaml.safe_load(yaml.safe_dump(export_doc(st)))
    again = build_state(doc, st)
    assert diff(st, again) == []
    assert {e.id: (e.address, e.vni) for e in again.enis.values()} == \
        {e.id: (e.address, e.vni) for e in st.enis.values()}


def test_apply_diff_names_changes():
    st = sample()
    doc = export_doc(st)
    doc["functions"] = [f for f in doc["functions"] if f["name"] != "f3"]
    doc["workers"].append("100.64.0.12")
    new = build_state(doc, st)
    ops = {(c["op"], c["kind"], c["id"]) for c in diff(st, new)}
    assert ("delete", "functions", "f3") in ops and ("add", "workers", "100.64.0.12") in ops
    assert any(c[0] == "delete" and c[1] == "enis" for c in ops)


@pytest.mark.parametrize("doc,msg", [
    ({"vpcs": {"id": 1}}, "expected a list"),
    ({"vpcs": [{"id": "v"}]}, "missing 'cidr'"),
    ({"bogus": []}, "unknown section"),
    ("just a string", "must be a mapping"),
    ({"vpcs": [{"id": "v", "cidr": "10.0.0.0/16", "iface": "i", "gateway": "10.0.0.1"}],
      "subnets": [{"id": "s", "vpc": "nope", "cidr": "10.0.0.0/24"}]}, "VPC nope"),
])
def test_bad_documents(doc, msg):
    with pytest.raises(Exception, match=msg):
        build_state(doc, State())
