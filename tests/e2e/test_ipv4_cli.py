"""The node-wide IPv4 settings through the CLI on a running node: `ipv4 set` reaches the datapath's
config at once and is what `ipv4 show` and `status` report (status says "off" for the MSS clamp
when it is off), bad values exit 2 and change nothing, the stored settings come back after
`down --keep-maps` + `up` and after a plain `down` + `up`, `node.up` writes them before anything
else, and `export` / `apply -f` carry them. The module has a lab and a node of its own."""

from __future__ import annotations

import json

import pytest
import yaml

from clitools import configured_node, one_tenant
from eniplane import node as nodemod
from eniplane.datapath import Datapath
from eniplane.lab import Lab

DEFAULTS = {"mss_clamp": True, "icmp_rate": 1000, "tunnel_gateway": "169.254.0.1"}
CHANGED = {"mss_clamp": False, "icmp_rate": 7, "tunnel_gateway": "10.255.0.1"}
SET_CHANGED = ("ipv4", "set", "--mss-clamp", "off", "--icmp-rate", "7",
               "--tunnel-gateway", "10.255.0.1")
SET_DEFAULTS = ("ipv4", "set", "--mss-clamp", "on", "--icmp-rate", "1000",
                "--tunnel-gateway", "169.254.0.1")


def configuration() -> dict:
    return one_tenant([])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ipv4cli")
    with Lab.create() as lab:
        node = f"{lab.prefix}-v4cli"
        up = ("up", "--netns", lab.node_ns, "--fabric-if", lab.fabric_if,
              "--fabric-ip", lab.fabric_ip)
        with configured_node(lab, node, configuration(), tmp) as cli:
            yield {"lab": lab, "node": node, "cli": cli, "up": up}


@pytest.fixture
def restored(world):
    """Each test starts and ends with the default settings, stored and programmed."""
    yield world
    cli = world["cli"]
    if not nodemod.is_up(world["node"]):
        cli(*world["up"])
    cli(*SET_DEFAULTS)
    assert programmed(world) == DEFAULTS


def programmed(world) -> dict:
    with Datapath(world["node"], world["lab"].node_ns) as dp:
        return dp.ipv4_settings()


def shown(cli) -> dict:
    return json.loads(cli("ipv4", "show", "-o", "json").stdout)


def status(cli) -> dict:
    return json.loads(cli("status", "-o", "json").stdout)


def vpca_clamp(cli):
    (vpca,) = [i for i in status(cli)["interfaces"] if i["ifname"] == "vpca"]
    return vpca["mss_clamp"]


def test_a_fresh_node_runs_the_defaults(world):
    cli = world["cli"]
    assert shown(cli) == programmed(world) == status(cli)["ipv4"] == DEFAULTS
    assert isinstance(vpca_clamp(cli), int) and vpca_clamp(cli) >= 536


def test_ipv4_set_reaches_the_datapath_show_and_status(restored):
    cli = restored["cli"]
    clamp = vpca_clamp(cli)
    p = cli(*SET_CHANGED)
    assert "not up" not in p.stderr
    assert shown(cli) == programmed(restored) == status(cli)["ipv4"] == CHANGED
    assert vpca_clamp(cli) == "off"
    table = cli("status").stdout
    assert "IPv4 settings" in table and "10.255.0.1" in table
    (vpca_row,) = [line for line in table.splitlines() if "vpca" in line]
    assert "off" in vpca_row.split()
    cli("ipv4", "set", "--mss-clamp", "on")
    assert vpca_clamp(cli) == clamp  # the interface's clamp again, not a default
    assert programmed(restored) == {**CHANGED, "mss_clamp": True}
    cli("ipv4", "set", "--icmp-rate", "0")  # 0 is a rate like any other: no ICMP at all
    assert programmed(restored)["icmp_rate"] == 0 and status(cli)["ipv4"]["icmp_rate"] == 0


@pytest.mark.parametrize("args,option", [
    (("ipv4", "set"), "--mss-clamp, --icmp-rate, --tunnel-gateway"),
    (("ipv4", "set", "--mss-clamp", "no"), "--mss-clamp"),
    (("ipv4", "set", "--icmp-rate", "-5"), "--icmp-rate"),
    (("ipv4", "set", "--icmp-rate", "2", "--tunnel-gateway", "0.0.0.0"), "--tunnel-gateway"),
    (("ipv4", "set", "--tunnel-gateway", "10.1"), "--tunnel-gateway"),
])
def test_bad_values_exit_2_and_change_nothing(world, args, option):
    cli = world["cli"]
    with Datapath(world["node"], world["lab"].node_ns) as dp:
        before = dp.config()
    p = cli(*args, check=False)
    assert p.returncode == 2, p.stderr
    assert option in p.stderr
    with Datapath(world["node"], world["lab"].node_ns) as dp:
        assert dp.config() == before
    assert shown(cli) == DEFAULTS


def test_settings_survive_down_keep_maps_and_up(restored):
    """The maps outlive the programs; `up` then writes what the store says, whatever the maps
    held (here changed behind the store's back)."""
    world, cli = restored, restored["cli"]
    cli(*SET_CHANGED)
    cli("down", "--keep-maps")
    with Datapath(world["node"], world["lab"].node_ns) as dp:
        dp.set_ipv4(**DEFAULTS)
    cli(*world["up"])
    assert programmed(world) == shown(cli) == status(cli)["ipv4"] == CHANGED
    assert vpca_clamp(cli) == "off"


def test_settings_stored_while_down_are_what_up_brings(restored):
    world, cli = restored, restored["cli"]
    cli("down")
    p = cli(*SET_CHANGED)
    assert "not up" in p.stderr  # stored only
    cli(*world["up"])  # fresh maps: the store is all there is to go by
    assert programmed(world) == status(cli)["ipv4"] == CHANGED


def test_node_up_writes_them_before_attaching(restored):
    """node.up itself, before any sync: no packet meets the node with other settings."""
    world, cli, lab = restored, restored["cli"], restored["lab"]
    cli("down")
    nodemod.up(world["node"], lab.fabric_if, lab.fabric_ip, lab.node_ns, ipv4=CHANGED)
    assert programmed(world) == CHANGED
    cli("sync")  # the store still says the defaults: sync puts them back
    assert programmed(world) == DEFAULTS


def test_export_apply_round_trip_reaches_the_datapath(restored, tmp_path):
    world, cli = restored, restored["cli"]
    f = tmp_path / "node.yaml"
    cli("export", "--file", str(f))
    original = f.read_text()
    doc = yaml.safe_load(original)
    assert doc["ipv4"] == DEFAULTS
    assert json.loads(cli("apply", "-f", str(f), "-o", "json").stdout)["changes"] == []
    doc["ipv4"] = CHANGED
    f.write_text(yaml.safe_dump(doc))
    changes = json.loads(cli("apply", "-f", str(f), "-o", "json").stdout)["changes"]
    assert changes == [{"op": "change", "kind": "ipv4", "id": k} for k in CHANGED]
    assert programmed(world) == shown(cli) == CHANGED
    assert yaml.safe_load(cli("export").stdout) == doc
    doc["ipv4"] = {"icmp_rate": 50}  # the rest left out: their defaults
    f.write_text(yaml.safe_dump(doc))
    cli("apply", "-f", str(f))
    assert programmed(world) == {**DEFAULTS, "icmp_rate": 50}
    doc["ipv4"] = {"tunnel_gateway": "127.0.0.1"}
    f.write_text(yaml.safe_dump(doc))
    p = cli("apply", "-f", str(f), check=False)
    assert p.returncode == 1 and "ipv4: tunnel_gateway 127.0.0.1 cannot be the source" in p.stderr
    assert programmed(world) == {**DEFAULTS, "icmp_rate": 50}
    f.write_text(original)
    cli("apply", "-f", str(f))
    assert programmed(world) == DEFAULTS
