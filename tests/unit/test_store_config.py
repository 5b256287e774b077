"""SQLite store round trips and rollbacks; export then apply changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eniplane.config import InvalidDocument, build_state, diff, export_doc, schema
from eniplane.errors import AlreadyExists, InvalidInput, NotFound
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


# ---- malformed documents: the exact error, and the path to the entry ---------------------------
VPC = {"id": "v", "cidr": "10.0.0.0/16", "iface": "i", "gateway": "10.0.0.1"}
SUBNET = {"id": "s", "vpc": "v", "cidr": "10.0.1.0/24"}
RULE = {"proto": "tcp", "ports": "80", "cidr": "10.0.0.0/16"}
FUNCTION = {"name": "f", "subnets": ["s"], "security_groups": ["g"]}


def group(**kw) -> dict:
    return {"id": "g", "vpc": "v", "egress": [RULE], "ingress": [], **kw}


def world(**kw) -> dict:
    return {"vpcs": [VPC], "subnets": [SUBNET], "security_groups": [group()],
            "workers": ["100.64.0.11"], "functions": [FUNCTION], **kw}


def problems(doc) -> list[str]:
    with pytest.raises(InvalidDocument) as e:
        build_state(doc, State())
    assert str(e.value).splitlines() == e.value.problems
    return e.value.problems


def test_the_shipped_example_is_valid():
    root = Path(__file__).resolve().parents[2]
    st = build_state(yaml.safe_load((root / "examples" / "two-tenants.yaml").read_text()), State())
    assert len(st.functions) == 3 and len(st.enis) == 2


def test_the_world_itself_is_valid():
    st = build_state(world(), State())
    assert set(st.functions) == {"f"} and len(st.enis) == 1


@pytest.mark.parametrize("doc,line", [
    ({**world(), "vpc": []}, "unknown key 'vpc' (did you mean 'vpcs'?)"),
    ({**world(), "bogus": []},
     "unknown key 'bogus' (keys: vpcs, subnets, security_groups, workers, functions, enis, "
     "timeouts, limits, ipv4, events, node)"),
    (world(vpcs=[{**VPC, "ifaces": "i"}]), "vpcs[0]: unknown key 'ifaces' (did you mean 'iface'?)"),
    (world(subnets=[{**SUBNET, "cdir": "x"}]),
     "subnets[0]: unknown key 'cdir' (did you mean 'cidr'?)"),
    (world(security_groups=[group(ingres=[])]),
     "security_groups[0]: unknown key 'ingres' (did you mean 'ingress'?)"),
    (world(security_groups=[group(egress=[RULE, {"proto": "tcp", "port": "80",
                                                  "cidr": "10.0.0.0/16"}])]),
     "security_groups[0].egress[1]: unknown key 'port' (did you mean 'ports'?)"),
    (world(security_groups=[group(ingress=[{**RULE, "protocol": "tcp"}])]),
     "security_groups[0].ingress[0]: unknown key 'protocol' (did you mean 'proto'?)"),
    (world(functions=[{**FUNCTION, "security_group": ["g"]}]),
     "functions[0]: unknown key 'security_group' (did you mean 'security_groups'?)"),
    (world(timeouts={"tcp_establised": 5}),
     "timeouts: unknown key 'tcp_establised' (did you mean 'tcp_established'?)"),
    (world(limits={"flows_per_eni": 5, "max_flows": 5}),
     "limits: unknown key 'max_flows' (keys: flows_per_eni)"),
    (world(enis=[{"subnet": "s", "security_groups": ["g"], "maxflows": 5}]),
     "enis[0]: unknown key 'maxflows' (did you mean 'max_flows'?)"),
])
def test_unknown_keys_at_every_level(doc, line):
    assert line in problems(doc)


def test_egres_is_not_a_group_without_rules():
    g = group()
    g["egres"] = g.pop("egress")
    assert problems(world(security_groups=[g])) == [
        "security_groups[0]: unknown key 'egres' (did you mean 'egress'?)"]


def test_gatway_is_not_dropped():
    v = {k: v for k, v in VPC.items() if k != "gateway"}
    assert problems(world(vpcs=[{**v, "gatway": "10.0.0.1"}])) == [
        "vpcs[0]: missing required key 'gateway'",
        "vpcs[0]: unknown key 'gatway' (did you mean 'gateway'?)"]


def test_every_problem_is_reported_once_with_its_path():
    doc = {"vpcs": [{"id": "v"}], "workers": [None, "1.1.1.1"],
           "functions": [{"name": "f", "subnets": "s", "security_groups": [True], "x": 1}]}
    assert problems(doc) == [
        "vpcs[0]: missing required key 'cidr'",
        "vpcs[0]: missing required key 'iface'",
        "vpcs[0]: missing required key 'gateway'",
        "workers[0]: expected a mapping, got nothing (null)",
        "functions[0].subnets: expected a list, got a string",
        "functions[0].security_groups[0]: expected a string, got a boolean",
        "functions[0]: unknown key 'x' (keys: name, subnets, security_groups, workers)",
    ]


@pytest.mark.parametrize("doc,line", [
    ({"vpcs": {"id": 1}}, "vpcs: expected a list, got a mapping"),
    ({"vpcs": ["v"]}, "vpcs[0]: expected a mapping, got a string"),
    ("just a string", "the file must be a mapping with vpcs, subnets, security_groups, workers, "
                      "functions, enis, timeouts, limits, ipv4, events, node, not a string"),
    ([1, 2], "the file must be a mapping with vpcs, subnets, security_groups, workers, "
             "functions, enis, timeouts, limits, ipv4, events, node, not a list"),
    (world(timeouts=30), "timeouts: expected a mapping, got a number"),
])
def test_wrong_types(doc, line):
    assert problems(doc) == [line]


@pytest.mark.parametrize("doc,exc,msg", [
    (world(subnets=[{**SUBNET, "vpc": "nope"}]), NotFound, "subnets[0]: VPC nope does not exist"),
    (world(vpcs=[{**VPC, "gateway": "10.1.0.1"}]), InvalidInput,
     "vpcs[0]: VPC v: gateway 10.1.0.1 is outside 10.0.0.0/16"),
    (world(security_groups=[group(egress=[{**RULE, "ports": "9-1"}])]), InvalidInput,
     "security_groups[0].egress[0]: port range '9-1' is inverted"),
    (world(workers=["100.64.0.11", "100.64.0.11"]), AlreadyExists,
     "workers[1]: worker 100.64.0.11 already exists"),
    (world(functions=[FUNCTION, FUNCTION]), InvalidInput,
     "functions[1]: function f is declared twice"),
])
def test_semantic_errors_come_from_the_state_operations_with_a_path(doc, exc, msg):
    with pytest.raises(exc) as e:
        build_state(doc, State())
    assert not isinstance(e.value, InvalidDocument) and str(e.value) == msg


def test_ports_all_absent_null_and_numbers():
    rules = [{"proto": "tcp", "cidr": "10.0.0.0/16"},
             {"proto": "udp", "ports": "all", "cidr": "10.0.0.0/16"},
             {"proto": "tcp", "ports": None, "cidr": "10.0.0.0/8"},
             {"proto": "tcp", "ports": 443, "cidr": "10.0.0.0/16"}]
    st = build_state(world(security_groups=[group(egress=rules, ingress=None)]), State())
    got = [(r.proto, r.port_lo, r.port_hi) for r in st.sgs["g"].rules]
    assert got == [("tcp", 0, 65535), ("udp", 0, 65535), ("tcp", 0, 65535), ("tcp", 443, 443)]


def test_empty_sections_and_an_empty_file_mean_nothing():
    assert build_state(None, State()) == State()
    assert build_state(yaml.safe_load("vpcs:\nfunctions:\n"), State()) == State()


def test_schema_forbids_unknown_keys_at_every_level():
    s = schema()
    objects = [s, *s["$defs"].values()]
    assert {o["title"] for o in objects} == {"eniplane configuration", "VpcDoc", "SubnetDoc",
                                             "SecurityGroupDoc", "RuleDoc", "FunctionDoc",
                                             "WorkerDoc", "EniDoc", "TimeoutsDoc", "LimitsDoc",
                                             "Ipv4Doc", "EventsDoc", "NodeDoc"}
    assert all(o["additionalProperties"] is False for o in objects)


# ---- the store, read without creating it ----------------------------------------------------
def test_peek_creates_nothing_and_reads_what_is_there(tmp_path):
    path = tmp_path / "d" / "s.db"
    assert Store.peek("n", path) == State()
    assert not (tmp_path / "d").exists()
    st = sample()
    with Store("n", path) as s, s.transaction() as cur:
        cur.__dict__.update(st.copy().__dict__)
    assert Store.peek("n", path) == st


def test_peek_of_a_node_never_used(tmp_path, monkeypatch):
    monkeypatch.setenv("ENIPLANE_STATE_DIR", str(tmp_path))
    assert Store.peek("fresh") == State()
    assert list(tmp_path.iterdir()) == []


# ---- through the command line --------------------------------------------------------------
def test_a_typo_in_a_rule_applies_nothing(cli, tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(world()))
    cli("apply", "-f", str(ok))
    before = cli("export").stdout
    doc = world(security_groups=[group(egress=[RULE, {"proto": "tcp", "port": "80",
                                                       "cidr": "10.0.0.0/16"}])],
                functions=[FUNCTION, {**FUNCTION, "name": "f2"}])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    r = cli("apply", "-f", str(bad), code=1)
    assert r.stderr.splitlines() == [
        f"eniplane: error: {bad}: security_groups[0].egress[1]: unknown key 'port' "
        f"(did you mean 'ports'?)"]
    assert cli("export").stdout == before
    cli("apply", "-f", str(bad), "--dry-run", code=1)


def test_every_problem_is_one_line_naming_the_file(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("vpcs:\n- {id: v, gatway: 10.0.0.1, cidr: 10.0.0.0/16, iface: i}\n"
                   "security_groups:\n- {id: g, vpc: v, egres: []}\n")
    r = cli("apply", "-f", str(bad), code=1)
    assert r.stderr.splitlines() == [
        f"eniplane: error: {bad}: vpcs[0]: missing required key 'gateway'",
        f"eniplane: error: {bad}: vpcs[0]: unknown key 'gatway' (did you mean 'gateway'?)",
        f"eniplane: error: {bad}: security_groups[0]: unknown key 'egres' "
        f"(did you mean 'egress'?)"]


def test_dry_run_creates_no_state_database(cli, tmp_path):
    doc = tmp_path / "w.yaml"
    doc.write_text(yaml.safe_dump(world()))
    r = cli("apply", "-f", str(doc), "--dry-run", "-o", "json")
    assert {"op": "add", "kind": "functions", "id": "f"} in json.loads(r.stdout)["changes"]
    assert not (tmp_path / "state").exists()
    cli("export")
    cli("vpc", "list")
    assert not (tmp_path / "state").exists()
    cli("apply", "-f", str(doc))
    assert (tmp_path / "state" / "unit" / "state.db").exists()


def test_apply_schema_prints_the_json_schema(cli):
    r = cli("apply", "--schema")
    printed = json.loads(r.stdout)
    assert printed == json.loads(json.dumps(schema()))
    assert '"additionalProperties": false' in r.stdout
    assert printed["$defs"]["RuleDoc"]["properties"]["proto"]["enum"] == ["all", "icmp", "tcp",
                                                                          "udp"]


def test_apply_without_a_file_is_a_usage_error(cli):
    r = cli("apply", code=2)
    assert "--file" in r.stderr


@pytest.mark.parametrize("args,msg", [
    (["export", "-f", "/nonexistent/x"], "cannot write /nonexistent/x: No such file or directory"),
    (["apply", "-f", "/nonexistent/x"], "cannot read /nonexistent/x: No such file or directory"),
    (["apply", "-f", "/"], "cannot read /: Is a directory"),
])
def test_file_errors_are_one_line(cli, args, msg):
    r = cli(*args, code=1)
    assert r.stderr == f"eniplane: error: {msg}\n"


def test_binary_file_is_one_line(cli, tmp_path):
    f = tmp_path / "bin.yaml"
    f.write_bytes(b"\xff\xfe\x00garbage")
    r = cli("apply", "-f", str(f), code=1)
    assert r.stderr == f"eniplane: error: {f}: not a UTF-8 text file\n"


# ---- placement and pinned MACs in the file ---------------------------------------------------
PLACED = """
vpcs: [{id: v, cidr: 10.0.0.0/16, iface: vpca, gateway: 10.0.0.1, gateway_mac: "02:0a:00:00:00:01"}]
subnets: [{id: s, vpc: v, cidr: 10.0.1.0/24}]
security_groups: [{id: g, vpc: v, egress: [{proto: tcp, ports: "80", cidr: 10.0.0.0/16}]}]
workers: [100.64.0.11, {ip: 100.64.0.12, mac: "02:00:00:00:00:12"}]
functions: [{name: f, subnets: [s], security_groups: [g], workers: [100.64.0.11, 100.64.0.12]}]
"""


def test_placement_and_pinned_macs_round_trip():
    import yaml

    st = build_state(yaml.safe_load(PLACED), State())
    assert st.vpcs["v"].gateway_mac == "02:0a:00:00:00:01"
    assert st.worker_macs == {"100.64.0.12": "02:00:00:00:00:12"}
    (eni,) = st.enis.values()
    assert st.placements() == {("100.64.0.11", eni.vni): 1, ("100.64.0.12", eni.vni): 1}
    again = build_state(export_doc(st), st)
    assert diff(st, again) == [] and again.placements() == st.placements()


@pytest.mark.parametrize("change,line", [
    (("workers: [100.64.0.11, {ip: 100.64.0.12, mac: \"02:00:00:00:00:12\"}]",
      "workers: [100.64.0.11, {ip: 100.64.0.12, maac: x}]"),
     "workers[1]: unknown key 'maac' (did you mean 'mac'?)"),
    (("workers: [100.64.0.11, 100.64.0.12]]", "workers: [100.64.0.11]]"), None),
])
def test_placement_errors_name_their_path(change, line):
    import yaml

    text = PLACED.replace(*change)
    if line is None:  # a function placed on a worker the file does not declare
        text = PLACED.replace("workers: [100.64.0.11, {ip: 100.64.0.12, mac: \"02:00:00:00:00:12\"}]",
                              "workers: [100.64.0.11]")
        with pytest.raises(NotFound, match=r"functions\[0\]: worker 100.64.0.12 does not exist"):
            build_state(yaml.safe_load(text), State())
        return
    assert problems(yaml.safe_load(text)) == [line]
