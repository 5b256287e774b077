"""Two tenants configured only through the CLI, real traffic per function, ENIs shared, and the
configuration coming back after `down && up` with no command repeated."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from clitools import node_cli

from eniplane.lab import VPC_SERVER, Lab

PY = sys.executable


@pytest.fixture(scope="module")
def world():
    with Lab.create() as lab:
        node = f"{lab.prefix}-cp"

        cli = node_cli(node)

        cli("up", "--netns", lab.node_ns, "--fabric-if", lab.fabric_if,
            "--fabric-ip", lab.fabric_ip)
        try:
            for t, iface in (("acme", "vpca"), ("globex", "vpcb")):
                cli("vpc", "add", f"vpc-{t}", "--cidr", "10.0.0.0/16", "--iface", iface,
                    "--gateway", "10.0.0.1")
                cli("subnet", "add", f"sub-{t}", "--vpc", f"vpc-{t}", "--cidr", "10.0.1.0/24")
                cli("sg", "add", f"sg-{t}", "--vpc", f"vpc-{t}")
                cli("sg", "rule", "add", f"sg-{t}", "--egress", "--proto", "tcp", "--ports", "80",
                    "--cidr", "10.0.0.0/16")
                cli("sg", "rule", "add", f"sg-{t}", "--egress", "--proto", "udp", "--ports", "7",
                    "--cidr", "10.0.0.0/16")
            for w in ("100.64.0.11", "100.64.0.12"):
                cli("worker", "add", w)
            vni = {}
            for fn, t, w in (("acme-api", "acme", "100.64.0.11"),
                             ("acme-worker", "acme", "100.64.0.12"),
                             ("globex-report", "globex", "100.64.0.12")):
                out = cli("function", "attach", fn, "--subnet", f"sub-{t}", "--sg", f"sg-{t}",
                          "--worker", w, "-o", "json").stdout
                vni[fn] = json.loads(out)["enis"][0]["vni"]
            envs = {"acme-api": lab.add_env("api", "w1", vni["acme-api"], "172.16.0.2"),
                    "acme-worker": lab.add_env("wrk", "w2", vni["acme-worker"], "172.16.0.3"),
                    "globex-report": lab.add_env("rep", "w2", vni["globex-report"], "172.16.0.2")}
            yield lab, cli, envs, vni
        finally:
            cli("down", check=False)


def test_two_enis_serve_three_functions(world):
    _, cli, _, vni = world
    enis = json.loads(cli("eni", "list", "-o", "json").stdout)
    assert len(enis) == 2
    assert sorted(len(e["functions"]) for e in enis) == [1, 2]
    assert vni["acme-api"] == vni["acme-worker"] != vni["globex-report"]


def test_each_function_reaches_its_own_vpc(world):
    lab, _, envs, _ = world
    for fn, ns in envs.items():
        body = lab.exec(ns, [PY, "-m", "eniplane.labserve", "http", VPC_SERVER, "80"])
        want = "vpc-a" if fn.startswith("acme") else "vpc-b"
        assert body.startswith(f"{want} saw 10.0.1.4:"), (fn, body)
        echo = lab.exec(ns, [PY, "-m", "eniplane.labserve", "udp", VPC_SERVER, "7", fn])
        assert echo.strip().endswith(fn)


def test_flows_and_eni_show(world):
    lab, cli, envs, _ = world
    lab.exec(envs["acme-api"], [PY, "-m", "eniplane.labserve", "http", VPC_SERVER, "80"])
    flows = json.loads(cli("flows", "-o", "json").stdout)
    assert any(f["proto"] == "tcp" and f["remote"] == f"{VPC_SERVER}:80" and
               f["packets_out"] > 0 and f["packets_in"] > 0 for f in flows)
    eni = next(e for e in json.loads(cli("eni", "list", "-o", "json").stdout)
               if "acme-api" in e["functions"])
    shown = json.loads(cli("eni", "show", eni["id"], "-o", "json").stdout)
    assert shown["flows"] >= 1 and shown["counters"]["flows_created"] >= 1
    per_eni = json.loads(cli("stats", "--eni", eni["id"], "-o", "json").stdout)
    assert per_eni["counters"]["tx_packets"] > 0
    assert "flushed" in cli("flows", "flush", "--eni", eni["id"]).stderr
    remaining = json.loads(cli("flows", "--eni", eni["id"], "-o", "json").stdout)
    assert remaining == []


def test_rule_removal_refuses_new_flows(world):
    lab, cli, envs, _ = world
    rule = ["sg-globex", "--egress", "--proto", "udp", "--ports", "7", "--cidr", "10.0.0.0/16"]
    udp = [PY, "-m", "eniplane.labserve", "udp", VPC_SERVER, "7", "x", "--timeout", "1"]

    def denied() -> int:
        return json.loads(cli("stats", "-o", "json").stdout)["counters"]["drop_sg_denied"]

    before = denied()
    cli("sg", "rule", "del", *rule)
    try:
        p = lab.run(envs["globex-report"], udp)  # a new source port: a new flow, checked again
        assert p.returncode == 1 and "timed out" in p.stderr, (p.returncode, p.stderr)
        assert denied() > before
    finally:
        cli("sg", "rule", "add", *rule)
    # the same exchange works again once the rule is back: it was the rule that refused it
    p = lab.run(envs["globex-report"], udp)
    assert p.returncode == 0 and p.stdout.startswith("vpc-b saw 10.0.1.4:"), p.stderr


def _flow_enis(cli) -> dict[str, int]:
    flows = json.loads(cli("flows", "-o", "json").stdout)
    return {e: sum(f["eni"] == e for f in flows) for e in {f["eni"] for f in flows}}


def test_flows_flush_honours_node_and_eni_wherever_written(world):
    lab, cli, envs, _ = world
    enis = {fn: e["id"] for e in json.loads(cli("eni", "list", "-o", "json").stdout)
            for fn in e["functions"]}
    acme, globex = enis["acme-api"], enis["globex-report"]

    def traffic() -> None:
        for fn in ("acme-api", "globex-report"):
            lab.exec(envs[fn], [PY, "-m", "eniplane.labserve", "http", VPC_SERVER, "80"])

    name = f"{lab.prefix}-cp"  # the world's node, not `default`
    traffic()
    assert {acme, globex} <= set(_flow_enis(cli))
    # options before the subcommand: parsed by the `flows` group, they must still apply
    p = subprocess.run([PY, "-m", "eniplane", "flows", "--node", name, "--eni", globex, "flush"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"ENI {globex} on node {name}" in p.stderr
    left = _flow_enis(cli)
    assert globex not in left and left.get(acme, 0) > 0
    traffic()
    # options after it
    p = cli("flows", "flush", "--eni", acme)  # cli() adds --node NAME at the end
    assert f"ENI {acme} on node {name}" in p.stderr
    left = _flow_enis(cli)
    assert acme not in left and left.get(globex, 0) > 0
    # a node that is not up is an error naming it, and touches no other node
    p = subprocess.run([PY, "-m", "eniplane", "flows", "--node", f"{name}-nosuch", "flush"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert p.stderr.strip() == f"eniplane: error: node {name}-nosuch is not up"
    assert left == _flow_enis(cli)


def test_down_up_brings_the_configuration_back(world):
    lab, cli, envs, _ = world
    before = cli("export").stdout
    cli("down")
    cli("up", "--netns", lab.node_ns, "--fabric-if", lab.fabric_if, "--fabric-ip", lab.fabric_ip)
    assert cli("export").stdout == before
    body = lab.exec(envs["globex-report"], [PY, "-m", "eniplane.labserve", "http", VPC_SERVER,
                                            "80"])
    assert body.startswith("vpc-b saw 10.0.1.4:")


def test_vpc_add_and_del_with_the_node_up(world):
    lab, cli, _, _ = world
    lab.exec(lab.node_ns, ["ip", "link", "add", "vx-extra", "type", "veth", "peer", "name",
                           "vx-extra-p"])
    lab.exec(lab.node_ns, ["ip", "link", "set", "vx-extra", "up"])
    lab.exec(lab.node_ns, ["ip", "link", "set", "vx-extra-p", "up"])
    try:
        p = cli("vpc", "add", "vpc-extra", "--cidr", "10.9.0.0/16", "--iface", "vx-extra",
                "--gateway", "10.9.0.1")
        assert "did not answer ARP" in p.stderr  # nobody there: a warning, not a failure
        st = json.loads(cli("status", "-o", "json").stdout)
        extra = next(i for i in st["interfaces"] if i["ifname"] == "vx-extra")
        assert extra["program"] == "xdp_vpc" and extra["attached"]
        vpcs = json.loads(cli("maps", "dump", "vpcs", "-o", "json").stdout)
        assert any(e["value"]["flags"] & 2 and e["value"]["gateway_ip"] == "10.9.0.1"
                   for e in vpcs)
        cli("vpc", "del", "vpc-extra")
        st = json.loads(cli("status", "-o", "json").stdout)
        assert "vx-extra" not in {i["ifname"] for i in st["interfaces"]}
        from eniplane import netlink
        assert netlink.link_get(lab.node_ns, "vx-extra")["xdp_prog_id"] == 0
        vpcs = json.loads(cli("maps", "dump", "vpcs", "-o", "json").stdout)
        assert not any(e["value"]["gateway_ip"] == "10.9.0.1" and e["value"]["flags"] & 2
                       for e in vpcs)
        ifs = json.loads(cli("maps", "dump", "vpc_ifs", "-o", "json").stdout)
        assert len(ifs) == 2  # the two tenants' interfaces only
    finally:
        lab.exec(lab.node_ns, ["ip", "link", "del", "vx-extra"], check=False)
