"""Node life cycle in the lab, through the CLI as an operator runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eniplane import paths

CLI = [sys.executable, "-m", "eniplane"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture
def cli_node(lab):
    name = f"{lab.prefix}-cli"
    yield name
    cli("down", "--node", name, check=False)


def test_up_status_stats_down(lab, cli_node):
    up = cli("up", "--netns", lab.node_ns, "--fabric-if", "fab0", "--fabric-ip", lab.fabric_ip,
             "--node", cli_node, "-o", "json")
    assert json.loads(up.stdout)["mode"] == "native"
    st = json.loads(cli("status", "--node", cli_node, "-o", "json").stdout)
    (fab,) = st["interfaces"]
    assert (fab["ifname"], fab["program"], fab["hook"], fab["mode"], fab["attached"]) == \
        ("fab0", "xdp_fabric", "xdp", "native", True)
    assert fab["prog_id"] == st["programs"]["xdp_fabric"]
    assert {m["name"] for m in st["maps"]} >= {"flows", "flow_guard", "stats", "tx_ports"}

    before = json.loads(cli("stats", "--node", cli_node, "-o", "json").stdout)["counters"]
    # a worker pings the node: plain traffic goes through xdp_fabric to the kernel
    lab.exec(lab.worker_ns("w1"), ["ping", "-c", "3", "-i", "0.2", "-W", "1", lab.fabric_ip])
    after = json.loads(cli("stats", "--node", cli_node, "-o", "json").stdout)["counters"]
    assert after["rx_fabric"] - before["rx_fabric"] >= 3
    assert after["pass_not_tunnel"] - before["pass_not_tunnel"] >= 3
    assert after["xdp_pass"] - before["xdp_pass"] >= 3

    # bpftool decodes every pinned map too
    for m in ("flows", "stats", "config"):
        subprocess.run(["bpftool", "map", "dump", "pinned", str(paths.maps_dir(cli_node) / m)],
                       check=True, capture_output=True)

    cli("down", "--node", cli_node)
    assert not paths.pin_dir(cli_node).exists()
    from eniplane import netlink
    assert netlink.link_get(lab.node_ns, "fab0")["xdp_prog_id"] == 0


def test_bad_input_is_one_line_and_leaves_nothing(lab, cli_node):
    p = cli("up", "--netns", lab.node_ns, "--fabric-if", "nosuch0", "--fabric-ip", lab.fabric_ip,
            "--node", cli_node, check=False)
    assert p.returncode == 1 and "nosuch0" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    p = cli("up", "--netns", "no-such-ns", "--fabric-if", "fab0", "--fabric-ip", lab.fabric_ip,
            "--node", cli_node, check=False)
    assert p.returncode == 1 and "no-such-ns" in p.stderr
    p = cli("up", "--netns", lab.node_ns, "--fabric-if", "fab0", "--fabric-ip", "300.1.1.1",
            "--node", cli_node, check=False)
    assert p.returncode == 2 and "300.1.1.1" in p.stderr and "--fabric-ip" in p.stderr
    assert not paths.pin_dir(cli_node).exists()
    p = cli("down", "--node", cli_node, check=False)
    assert p.returncode == 1 and "not up" in p.stderr


def test_second_up_is_refused_and_first_stays(lab, cli_node):
    args = ["up", "--netns", lab.node_ns, "--fabric-if", "vpcb", "--fabric-ip", lab.fabric_ip,
            "--node", cli_node]
    cli(*args)
    p = cli(*args, check=False)
    assert p.returncode == 1 and "already up" in p.stderr
    st = json.loads(cli("status", "--node", cli_node, "-o", "json").stdout)
    assert st["interfaces"][0]["attached"]


def test_keep_maps_survives_a_reload(lab, cli_node):
    args = ["up", "--netns", lab.node_ns, "--fabric-if", "vpcb", "--fabric-ip", lab.fabric_ip,
            "--node", cli_node]
    cli(*args)
    cli("worker", "add", "100.64.0.99", "--node", cli_node)
    # ARP for an unknown neighbour reaches vpcb, where this node runs xdp_fabric
    lab.exec(lab.vpc_ns("b"), ["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.0.0.99"],
             check=False)
    before = json.loads(cli("stats", "--node", cli_node, "-o", "json").stdout)["counters"]
    assert before["rx_fabric"] >= 2
    cli("down", "--keep-maps", "--node", cli_node)
    assert (paths.maps_dir(cli_node) / "stats").exists()
    cli(*args)
    after = json.loads(cli("stats", "--node", cli_node, "-o", "json").stdout)["counters"]
    assert after["rx_fabric"] >= before["rx_fabric"]  # the datapath's own maps were kept
    from eniplane.datapath import Datapath
    with Datapath(cli_node) as dp:  # and `up` re-synced the stored configuration
        assert dp.map("workers").lookup("100.64.0.99") is not None
