"""The flow lifecycle through the CLI on a running node: timeouts and limits reach the maps at once
(and again after `down && up`), bad values change nothing, export/apply carry them, and `flows`,
`flows --all`, `flows sweep` and `stats` show what expiry did to real traffic."""

from __future__ import annotations

import json
import sys
import time

import pytest
from clitools import node_cli

from eniplane.lab import VPC_SERVER, Lab

PY = sys.executable
DEFAULTS = {"tcp_established": 350, "tcp_transitory": 240, "udp": 350, "icmp": 60}
LIFECYCLE_COUNTERS = ("tx_tcp_rst", "drop_tcp_no_flow", "drop_flow_expired", "drop_flow_limit",
                      "flow_takeover", "flow_reopened")


@pytest.fixture(scope="module")
def world():
    with Lab.create() as lab:
        node = f"{lab.prefix}-lc"
        cli = node_cli(node)
        up = ("up", "--netns", lab.node_ns, "--fabric-if", lab.fabric_if,
              "--fabric-ip", lab.fabric_ip)
        cli(*up)
        try:
            cli("vpc", "add", "vpc-a", "--cidr", "10.0.0.0/16", "--iface", "vpca",
                "--gateway", "10.0.0.1")
            cli("subnet", "add", "sub-a", "--vpc", "vpc-a", "--cidr", "10.0.1.0/24")
            cli("sg", "add", "sg-a", "--vpc", "vpc-a")
            cli("sg", "rule", "add", "sg-a", "--egress", "--proto", "udp", "--ports", "7",
                "--cidr", "10.0.0.0/16")
            cli("sg", "rule", "add", "sg-a", "--egress", "--proto", "tcp", "--ports", "80",
                "--cidr", "10.0.0.0/16")
            cli("worker", "add", "100.64.0.11")
            out = cli("function", "attach", "fn", "--subnet", "sub-a", "--sg", "sg-a",
                      "--worker", "100.64.0.11", "-o", "json").stdout
            eni = json.loads(out)["enis"][0]
            env = lab.add_env("lc", "w1", eni["vni"], "172.16.0.2")
            yield lab, cli, up, env, eni
        finally:
            cli("down", check=False)


def config(cli) -> dict:
    (entry,) = json.loads(cli("maps", "dump", "config", "-o", "json").stdout)
    return entry["value"]


def map_timeouts(cli) -> dict:
    cfg = config(cli)
    return {k: cfg[f"timeout_{k}"] for k in DEFAULTS}


def eni_entry(cli, vni: int) -> dict:
    return next(e["value"] for e in json.loads(cli("maps", "dump", "enis", "-o", "json").stdout)
                if e["key"] == vni)


def udp(lab, env, msg: str = "x"):
    return lab.run(env, [PY, "-m", "eniplane.labserve", "udp", VPC_SERVER, "7", msg,
                         "--timeout", "1"])


def test_up_writes_the_defaults(world):
    _, cli, _, _, _ = world
    assert map_timeouts(cli) == DEFAULTS
    assert config(cli)["flows_per_eni"] == 65000
    assert json.loads(cli("timeouts", "show", "-o", "json").stdout) == DEFAULTS
    assert json.loads(cli("limits", "show", "-o", "json").stdout) == {"flows_per_eni": 65000}


def test_timeouts_set_reaches_the_running_node(world):
    _, cli, _, _, _ = world
    try:
        p = cli("timeouts", "set", "--tcp-established", "20", "--icmp", "3")
        assert "not up" not in p.stderr
        want = {**DEFAULTS, "tcp_established": 20, "icmp": 3}
        assert json.loads(cli("timeouts", "show", "-o", "json").stdout) == want
        assert map_timeouts(cli) == want
    finally:
        cli("timeouts", "set", "--tcp-established", "350", "--icmp", "60")
    assert map_timeouts(cli) == DEFAULTS


@pytest.mark.parametrize("args", [
    ("timeouts", "set", "--udp", "0"), ("timeouts", "set", "--icmp", "-1"),
    ("timeouts", "set", "--tcp-transitory", "2.5"), ("timeouts", "set"),
    ("limits", "set", "--flows-per-eni", "0"), ("limits", "set"),
])
def test_bad_values_exit_2_and_change_nothing(world, args):
    _, cli, _, _, _ = world
    before = config(cli)
    p = cli(*args, check=False)
    assert p.returncode == 2, p.stderr
    assert config(cli) == before


def test_limits_and_eni_max_flows_reach_the_maps(world):
    _, cli, _, _, eni = world
    try:
        cli("limits", "set", "--flows-per-eni", "1000")
        assert config(cli)["flows_per_eni"] == 1000
        cli("eni", "set", eni["id"], "--max-flows", "5")
        assert eni_entry(cli, eni["vni"])["max_flows"] == 5
        shown = json.loads(cli("eni", "show", eni["id"], "-o", "json").stdout)
        assert (shown["max_flows"], shown["flow_limit"]) == (5, 5)
        assert isinstance(shown["flow_entries"], int)
        p = cli("eni", "set", eni["id"], "--max-flows", "-1", check=False)
        assert p.returncode == 2 and eni_entry(cli, eni["vni"])["max_flows"] == 5
    finally:
        cli("eni", "set", eni["id"], "--max-flows", "0")
        cli("limits", "set", "--flows-per-eni", "65000")
    assert eni_entry(cli, eni["vni"])["max_flows"] == 0
    (row,) = json.loads(cli("eni", "list", "-o", "json").stdout)
    assert (row["max_flows"], row["flow_limit"]) == (0, 65000)


def test_export_apply_round_trip_reaches_the_maps(world, tmp_path):
    _, cli, _, _, eni = world
    f = tmp_path / "node.yaml"
    cli("export", "--file", str(f))
    original = f.read_text()
    assert json.loads(cli("apply", "-f", str(f), "-o", "json").stdout)["changes"] == []
    import yaml

    doc = yaml.safe_load(original)
    doc["timeouts"]["udp"] = 17
    doc["limits"]["flows_per_eni"] = 900
    doc["enis"] = [{"subnet": "sub-a", "security_groups": ["sg-a"], "max_flows": 33}]
    f.write_text(yaml.safe_dump(doc))
    try:
        changes = json.loads(cli("apply", "-f", str(f), "-o", "json").stdout)["changes"]
        assert {(c["kind"], c["id"]) for c in changes} == {
            ("enis", eni["id"]), ("timeouts", "udp"), ("limits", "flows_per_eni")}
        assert map_timeouts(cli)["udp"] == 17 and config(cli)["flows_per_eni"] == 900
        assert eni_entry(cli, eni["vni"])["max_flows"] == 33
        assert yaml.safe_load(cli("export").stdout) == doc
    finally:
        f.write_text(original)
        cli("apply", "-f", str(f))
    assert map_timeouts(cli) == DEFAULTS and eni_entry(cli, eni["vni"])["max_flows"] == 0


def test_settings_survive_down_and_up(world):
    lab, cli, up, _, eni = world
    cli("timeouts", "set", "--udp", "11")
    cli("eni", "set", eni["id"], "--max-flows", "44")
    try:
        cli("down")
        cli(*up)
        assert map_timeouts(cli)["udp"] == 11
        assert eni_entry(cli, eni["vni"])["max_flows"] == 44
    finally:
        cli("timeouts", "set", "--udp", "350")
        cli("eni", "set", eni["id"], "--max-flows", "0")


def test_an_idle_flow_expires_is_listed_with_all_and_swept(world):
    lab, cli, _, env, eni = world
    cli("flows", "flush")
    p = udp(lab, env, "first")
    assert p.returncode == 0, p.stderr
    (f,) = json.loads(cli("flows", "--eni", eni["id"], "-o", "json").stdout)
    assert f["proto"] == "udp" and f["state"] == "active" and f["live"] is True
    assert 0 <= f["idle_s"] < 5
    stats = json.loads(cli("stats", "-o", "json").stdout)
    assert stats["flow_states"].get("active", 0) >= 1
    assert set(LIFECYCLE_COUNTERS) <= set(stats["counters"])
    cli("timeouts", "set", "--udp", "1")
    try:
        time.sleep(2.2)
        assert json.loads(cli("flows", "--eni", eni["id"], "-o", "json").stdout) == []
        (old,) = json.loads(cli("flows", "--all", "--eni", eni["id"], "-o", "json").stdout)
        assert old["live"] is False and old["idle_s"] >= 1 and old["nat"] == f["nat"]
        assert json.loads(cli("stats", "-o", "json").stdout)["flow_states"].get("active", 0) == 0
        before = json.loads(cli("stats", "-o", "json").stdout)["counters"]["flows_swept"]
        swept = json.loads(cli("flows", "sweep", "-o", "json").stdout)
        assert swept["removed"] >= 1 and swept["reaper"] == "kernel", swept
        assert {"kept", "gone", "scanned", "by_state", "seconds"} <= set(swept), swept
        after = json.loads(cli("stats", "-o", "json").stdout)["counters"]["flows_swept"]
        assert after == before + swept["removed"]
        assert json.loads(cli("flows", "--all", "--eni", eni["id"], "-o", "json").stdout) == []
        assert "swept 0 expired flows" in cli("flows", "sweep").stderr
    finally:
        cli("timeouts", "set", "--udp", "350")


def test_flows_all_is_a_list_option(world):
    _, cli, _, _, _ = world
    p = cli("flows", "-a", "sweep", check=False)
    assert p.returncode == 2 and "--all applies to the flow list" in p.stderr
