"""Operations that recover from a mistake or a crash, through the CLI on the lab: `down` of a node
whose record is gone, `lab up` over an existing lab, `stats -z` for scripts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from eniplane import netlink, paths
from eniplane.lab import Lab

CLI = [sys.executable, "-m", "eniplane"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def spare_if(lab):
    """An interface of its own in the lab's node namespace, so no other test's program is hit."""
    lab.exec(lab.node_ns, ["ip", "link", "add", "orph0", "type", "veth", "peer", "name", "orph1"])
    lab.exec(lab.node_ns, ["ip", "link", "set", "orph0", "up"])
    lab.exec(lab.node_ns, ["ip", "link", "set", "orph1", "up"])
    yield "orph0"
    lab.exec(lab.node_ns, ["ip", "link", "del", "orph0"], check=False)


def test_down_without_a_record_removes_what_is_pinned(lab, spare_if):
    node = f"{lab.prefix}-orphan"
    p = cli("up", "--netns", lab.node_ns, "--fabric-if", spare_if, "--fabric-ip", lab.fabric_ip,
            "--node", node)
    assert p.returncode == 0, p.stderr
    try:
        assert netlink.link_get(lab.node_ns, spare_if)["xdp_prog_id"]
        shutil.rmtree(paths.state_dir(node))  # the crash: node.json and the store are gone
        p = cli("down", "--node", node)
        assert p.returncode == 0, p.stderr
        assert "no record" in p.stderr
        assert f"{spare_if} in namespace {lab.node_ns}" in p.stderr
        assert str(paths.pin_dir(node)) in p.stderr
        assert not paths.pin_dir(node).exists()
        assert netlink.link_get(lab.node_ns, spare_if)["xdp_prog_id"] == 0
        # nothing left: now it is "not up", exit 1, one line
        p = cli("down", "--node", node)
        assert p.returncode == 1 and p.stderr.strip() == f"eniplane: error: node {node} is not up"
    finally:
        cli("down", "--node", node)
        shutil.rmtree(paths.pin_dir(node), ignore_errors=True)


def test_lab_up_over_an_existing_lab_is_refused_before_touching_it(lab):
    p = cli("lab", "up", "--name", lab.prefix)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip() == (f"eniplane: error: lab {lab.prefix} already exists "
                                f"(eniplane lab down {lab.prefix} first)")
    assert Lab.load(lab.prefix).namespaces == lab.namespaces  # its record is still there
    assert all(netlink.netns_exists(ns) for ns in lab.namespaces.values())


def test_lab_up_over_namespaces_without_a_record_is_refused(lab):
    name = f"{lab.prefix}x"
    netlink.netns_add(f"{name}-node")
    try:
        p = cli("lab", "up", "--name", name)
        assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert f"{name}-node" in p.stderr
        assert netlink.netns_exists(f"{name}-node")
        assert cli("lab", "down", name).returncode == 1  # no record was left behind either
    finally:
        netlink.netns_del(f"{name}-node")


def test_stats_nonzero_filters_json_too(lab, spare_if):
    node = f"{lab.prefix}-stats"  # its own node: the session's `node` fixture holds fab0
    p = cli("up", "--netns", lab.node_ns, "--fabric-if", spare_if, "--fabric-ip", lab.fabric_ip,
            "--node", node)
    assert p.returncode == 0, p.stderr
    try:
        # ARP from the veth peer reaches xdp_fabric on the spare interface: counters move
        lab.exec(lab.node_ns, ["ping", "-c", "1", "-W", "1", "-I", "orph1", "10.99.0.1"],
                 check=False)
        every = json.loads(cli("stats", "--node", node, "-o", "json").stdout)["counters"]
        assert 0 in every.values() and any(every.values())  # or the test proves nothing
        nonzero = json.loads(cli("stats", "--node", node, "-z", "-o", "json").stdout)["counters"]
        assert 0 not in nonzero.values()
        assert set(nonzero) >= {k for k, v in every.items() if v}  # counters only grow
    finally:
        cli("down", "--node", node)
