"""A malformed address, CIDR, port range or protocol on the command line is a usage error: exit 2,
naming the option, before the command touches the store or the kernel."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from eniplane.cli import app

VPC = ["vpc", "add", "v", "--iface", "i"]
RULE = ["sg", "rule", "add", "g", "--egress"]
RULE_DEL = ["sg", "rule", "del", "g", "--egress"]


@pytest.mark.parametrize("args,name", [
    (["up", "--fabric-if", "x", "--fabric-ip", "100.64.0.300"], "--fabric-ip"),
    (["up", "-f", "x", "-a", "fab0"], "--fabric-ip"),
    ([*VPC, "--cidr", "10.0.0.0/33", "--gateway", "10.0.0.1"], "--cidr"),
    ([*VPC, "--cidr", "10.0.0.1/16", "--gateway", "10.0.0.1"], "--cidr"),  # host bits
    ([*VPC, "--cidr", "10.0.0.0/16", "--gateway", "10.0.0"], "--gateway"),
    (["subnet", "add", "s", "--vpc", "v", "--cidr", "10.0.1.0/244"], "--cidr"),
    ([*RULE, "--proto", "tcp", "--cidr", "10.0.0.0/8/8"], "--cidr"),
    ([*RULE, "--proto", "tcp", "--cidr", "0/0"], "--cidr"),
    ([*RULE, "--proto", "sctp", "--cidr", "10.0.0.0/8"], "--proto"),
    ([*RULE, "--proto", "tcp", "--ports", "80-", "--cidr", "10.0.0.0/8"], "--ports"),
    ([*RULE, "--proto", "tcp", "--ports", "70000", "--cidr", "10.0.0.0/8"], "--ports"),
    ([*RULE, "--proto", "tcp", "--ports", "9-1", "--cidr", "10.0.0.0/8"], "--ports"),
    ([*RULE, "--proto", "tcp", "--ports", "", "--cidr", "10.0.0.0/8"], "--ports"),
    ([*RULE_DEL, "--proto", "udp", "--cidr", "10.0.0.0/8x"], "--cidr"),
    ([*RULE_DEL, "--proto", "UDP", "--cidr", "10.0.0.0/8"], "--proto"),
    ([*RULE_DEL, "--proto", "udp", "--ports", "http", "--cidr", "10.0.0.0/8"], "--ports"),
    (["worker", "add", "100.64.0.256"], "IP"),
    (["worker", "del", "worker-1"], "IP"),
])
def test_malformed_values_are_usage_errors_naming_the_option(tmp_path, monkeypatch, args, name):
    monkeypatch.setenv("ENIPLANE_STATE_DIR", str(tmp_path))
    r = CliRunner().invoke(app, [*args, "--node", "unit"])
    assert r.exit_code == 2, r.output
    assert f"Invalid value for '{name}'" in r.output
    assert list(tmp_path.iterdir()) == []  # refused before anything was stored


def test_well_formed_values_pass_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("ENIPLANE_STATE_DIR", str(tmp_path))
    runner = CliRunner()
    for args in (["vpc", "add", "v", "-c", "10.0.0.0/16", "-i", "i", "-g", "10.0.0.1"],
                 ["sg", "add", "g", "-v", "v"],
                 ["sg", "rule", "add", "g", "-E", "-p", "tcp", "-P", "80-81", "-c", "10.0.0.0/8"],
                 ["worker", "add", "100.64.0.11"]):
        r = runner.invoke(app, [*args, "--node", "unit"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["sg", "show", "g", "-o", "json", "--node", "unit"])
    assert '"ports": "80-81"' in r.stdout and '"cidr": "10.0.0.0/8"' in r.stdout
