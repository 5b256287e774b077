"""Every control-plane command through Typer's runner, with the node down (store only):
output, JSON shapes and exit codes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from eniplane.cli import app

N = ["--node", "unit"]


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("ENIPLANE_STATE_DIR", str(tmp_path))
    runner = CliRunner()

    def _run(*args: str, code: int = 0):
        r = runner.invoke(app, [*args, *N])
        assert r.exit_code == code, r.output
        return r

    return _run


def setup_world(run):
    run("vpc", "add", "vpc-a", "--cidr", "10.0.0.0/16", "--iface", "vpca", "--gateway", "10.0.0.1")
    run("subnet", "add", "sub-a", "--vpc", "vpc-a", "--cidr", "10.0.1.0/24")
    run("sg", "add", "sg-web", "--vpc", "vpc-a")
    run("sg", "rule", "add", "sg-web", "--egress", "--proto", "tcp", "--ports", "80-81",
        "--cidr", "10.0.0.0/16")
    run("sg", "rule", "add", "sg-web", "--ingress", "--proto", "icmp", "--cidr", "0.0.0.0/0")
    run("worker", "add", "100.64.0.11")


def test_world_through_the_cli(run):
    setup_world(run)
    r = run("function", "attach", "f1", "--subnet", "sub-a", "--sg", "sg-web", "-o", "json")
    (eni,) = json.loads(r.stdout)["enis"]
    assert eni["address"] == "10.0.1.4" and eni["subnet"] == "sub-a" and eni["vni"] >= 4096
    assert "not up" in r.stderr  # stored, applied at `up`
    r2 = run("function", "attach", "f2", "-s", "sub-a", "-g", "sg-web", "-o", "json")
    assert json.loads(r2.stdout)["enis"][0]["id"] == eni["id"]
    enis = json.loads(run("eni", "list", "-o", "json").stdout)
    assert len(enis) == 1 and enis[0]["functions"] == ["f1", "f2"]
    shown = json.loads(run("eni", "show", eni["id"], "-o", "json").stdout)
    assert shown["vpc"] == "vpc-a" and shown["flows"] is None
    fns = json.loads(run("function", "list", "-o", "json").stdout)
    assert [f["name"] for f in fns] == ["f1", "f2"]
    sg = json.loads(run("sg", "show", "sg-web", "-o", "json").stdout)
    assert sg["egress"] == [{"proto": "tcp", "ports": "80-81", "cidr": "10.0.0.0/16"}]
    assert sg["ingress"] == [{"proto": "icmp", "ports": "all", "cidr": "0.0.0.0/0"}]
    assert json.loads(run("vpc", "list", "-o", "json").stdout)[0]["subnets"] == ["sub-a"]
    assert json.loads(run("subnet", "list", "-o", "json").stdout)[0]["enis"] == [eni["id"]]
    assert json.loads(run("worker", "list", "-o", "json").stdout) == [
        {"ip": "100.64.0.11", "mac": None, "mac_source": None, "relearn": False, "vlans": [],
         "functions": []}]
    run("function", "place", "f1", "--worker", "100.64.0.11")
    assert json.loads(run("worker", "list", "-o", "json").stdout)[0]["functions"] == ["f1"]
    bad = run("function", "place", "f1", "--worker", "100.64.0.99", code=1)
    assert "worker 100.64.0.99 does not exist" in bad.stderr
    run("function", "unplace", "f1", "--worker", "100.64.0.11")
    assert json.loads(run("worker", "list", "-o", "json").stdout)[0]["functions"] == []
    assert "sg-web" in run("sg", "list").stdout
    run("function", "detach", "f1")
    run("function", "detach", "f2")
    assert json.loads(run("eni", "list", "-o", "json").stdout) == []
    run("sg", "rule", "del", "sg-web", "--egress", "--proto", "tcp", "--ports", "80-81",
        "--cidr", "10.0.0.0/16")
    run("worker", "del", "100.64.0.11")
    run("sg", "del", "sg-web")
    run("subnet", "del", "sub-a")
    run("vpc", "del", "vpc-a")
    assert json.loads(run("vpc", "list", "-o", "json").stdout) == []


@pytest.mark.parametrize("args,code,msg", [
    (["vpc", "add", "vpc-a", "--cidr", "10.0.0.0/16", "--iface", "x", "--gateway", "10.0.0.1"],
     1, "already exists"),
    (["subnet", "add", "s2", "--vpc", "vpc-a", "--cidr", "10.0.1.128/25"], 1, "overlaps"),
    (["subnet", "add", "s2", "--vpc", "vpc-a", "--cidr", "bogus"], 2, "invalid CIDR"),
    (["sg", "rule", "add", "sg-web", "--egress", "--proto", "tcp", "--ports", "9-1",
      "--cidr", "10.0.0.0/16"], 2, "inverted"),
    (["sg", "rule", "add", "sg-web", "--egress", "--proto", "icmp", "--ports", "9",
      "--cidr", "10.0.0.0/16"], 2, "--ports does not apply to protocol icmp"),
    (["sg", "rule", "add", "sg-web", "--egress", "--ingress", "--proto", "tcp",
      "--cidr", "10.0.0.0/16"], 2, "exactly one"),
    (["sg", "rule", "add", "sg-web", "--egress", "--proto", "sctp", "--cidr", "10.0.0.0/16"],
     2, "not a protocol"),
    (["function", "attach", "f", "--subnet", "sub-a", "--sg", "nope"], 1, "nope"),
    (["vpc", "del", "vpc-a"], 1, "still in use"),
    (["eni", "show", "eni-00000000000000000"], 1, "does not exist"),
    (["function", "attach", "f", "--subnet", "sub-a"], 2, "--sg"),
])
def test_errors_are_one_line_and_change_nothing(run, args, code, msg):
    setup_world(run)
    before = run("export").stdout
    r = run(*args, code=code)
    assert msg in r.output
    assert run("export").stdout == before


def test_apply_dry_run_apply_and_malformed(run, tmp_path):
    setup_world(run)
    doc = tmp_path / "w.yaml"
    doc.write_text(run("export").stdout)
    r = run("apply", "-f", str(doc), "-o", "json")
    assert json.loads(r.stdout)["changes"] == []
    txt = doc.read_text().replace("functions: []", "functions:\n- {name: f9, subnets: [sub-a], "
                                                   "security_groups: [sg-web]}")
    doc.write_text(txt)
    r = run("apply", "-f", str(doc), "--dry-run", "-o", "json")
    ch = json.loads(r.stdout)["changes"]
    assert {"op": "add", "kind": "functions", "id": "f9"} in ch
    assert json.loads(run("function", "list", "-o", "json").stdout) == []  # dry run
    run("apply", "-f", str(doc))
    assert [f["name"] for f in json.loads(run("function", "list", "-o", "json").stdout)] == ["f9"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("vpcs: [\n  - oops: {\n")
    r = run("apply", "-f", str(bad), code=1)
    assert "malformed YAML at line" in r.output
    r = run("apply", "-f", str(tmp_path / "missing.yaml"), code=1)
    assert "cannot read" in r.output
