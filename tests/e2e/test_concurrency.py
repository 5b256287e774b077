"""Commands that change one node at the same time: they queue on the node lock, each either lands
or fails with one line, and after every round the maps say exactly what the store says."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clitools import node_cli
import yaml

from eniplane.lab import VPC_CIDR, VPC_GATEWAY, Lab

PY = sys.executable
BULK = 150  # with the 45 pairs below, ~200 ENIs: each reconcile takes a while
SUBNETS = ("sub-1", "sub-2", "sub-3")
SGS = ("sg-1", "sg-2", "sg-3", "sg-4")
# Every (subnet, group set) an ENI can stand for here: 3 x 15 pairs.
PAIRS = [(s, list(g)) for s in SUBNETS for n in range(1, len(SGS) + 1)
         for g in itertools.combinations(SGS, n)]
# The first attach pauses after its reconcile, before its commit, until RELEASE exists.
PAUSED_ATTACH = """
import os, time
from pathlib import Path
from eniplane import reconcile
from eniplane.cli import app

real, calls = reconcile.reconcile, []
def paused(node, st, *args, **kwargs):
    rep = real(node, st, *args, **kwargs)
    if not calls:
        calls.append(1)
        Path(os.environ["PAUSED"]).touch()
        deadline = time.monotonic() + 60
        while not Path(os.environ["RELEASE"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return rep
reconcile.reconcile = paused
app(prog_name="eniplane")
"""


def configuration(iface: str) -> dict:
    """One VPC, its subnets and groups (a rule each), and BULK ENIs besides the ones the tests
    make, so that every reconcile has a realistic amount of work."""
    groups = [list(g) for n in range(1, len(SGS) + 1) for g in itertools.combinations(SGS, n)]
    bulk = [f"bulk-{i}" for i in range(BULK // len(groups))]
    return {
        "vpcs": [{"id": "vpc-a", "cidr": VPC_CIDR, "iface": iface, "gateway": VPC_GATEWAY}],
        "subnets": [{"id": s, "vpc": "vpc-a", "cidr": f"10.0.{i}.0/24"}
                    for i, s in enumerate(SUBNETS + tuple(bulk), 1)],
        "security_groups": [{"id": g, "vpc": "vpc-a", "ingress": [],
                             "egress": [{"proto": "tcp", "ports": str(80 + i), "cidr": VPC_CIDR}]}
                            for i, g in enumerate(SGS, 1)],
        "workers": ["100.64.0.11"],
        "functions": [{"name": f"{s}-{j}", "subnets": [s], "security_groups": g}
                      for s in bulk for j, g in enumerate(groups)],
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conc")
    with Lab.create(servers=False) as lab:
        node = f"{lab.prefix}-conc"

        cli = node_cli(node)

        cli("up", "--netns", lab.node_ns, "--fabric-if", lab.fabric_if,
            "--fabric-ip", lab.fabric_ip)
        try:
            (tmp / "conf.yaml").write_text(yaml.safe_dump(configuration(lab.vpc_if("a"))))
            cli("apply", "-f", str(tmp / "conf.yaml"))
            yield lab, node, cli
        finally:
            cli("down", check=False)


def dump(cli, name: str) -> list[dict]:
    return json.loads(cli("maps", "dump", name, "-o", "json").stdout)


def assert_maps_equal_store(cli) -> list[dict]:
    enis = json.loads(cli("eni", "list", "-o", "json").stdout)
    stored = {e["vni"]: e["address"] for e in enis}
    assert {e["key"]: e["value"]["addr"] for e in dump(cli, "enis")} == stored
    assert {e["value"]["vni"]: e["key"]["addr"] for e in dump(cli, "eni_addrs")} == stored
    # every group has a rule, so every ENI has compiled rules and nothing else may
    assert {e["key"]["vni"] for e in dump(cli, "sg_rules")} == set(stored)
    return enis


def assert_one_line_or_ok(p: subprocess.Popen, out: str, err: str) -> bool:
    """True when the command landed; a failure must be the one-line busy error."""
    assert "Traceback" not in err, err
    if p.returncode == 0:
        return True
    assert p.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and " is busy: pid " in lines[0], err
    return False


def start(node: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "eniplane", *args, "--node", node],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def test_a_failed_command_leaves_another_ones_change_programmed(world, tmp_path):
    """The first attach sits between reconcile and commit; a second command fails meanwhile.
    Its clean-up must not remove the first one's new ENI from the maps."""
    lab, node, cli = world
    paused, release = tmp_path / "paused", tmp_path / "release"
    first = subprocess.Popen([PY, "-c", PAUSED_ATTACH, "function", "attach", "race-a",
                              "--subnet", "sub-1", "--sg", "sg-1", "--sg", "sg-4", "--node", node],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PAUSED": str(paused), "RELEASE": str(release)})
    try:
        deadline = time.monotonic() + 30
        while not paused.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = subprocess.run([PY, "-m", "eniplane", "function", "attach", "race-b",
                                 "--subnet", "sub-2", "--sg", "sg-2", "--node", node],
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ, "ENIPLANE_LOCK_TIMEOUT": "1"})
    finally:
        release.touch()
        out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    enis = json.loads(cli("eni", "list", "-o", "json").stdout)
    mine = [e for e in enis if e["functions"] == ["race-a"]]
    assert len(mine) == 1 and mine[0]["vni"] in {e["key"] for e in dump(cli, "enis")}
    assert_maps_equal_store(cli)
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        f"eniplane: error: node {node} is busy: pid {first.pid} (eniplane function attach race-a "
        f"--subnet sub-1 --sg sg-1 --sg sg-4 --node {node}) holds "
        f"{Path(os.environ['ENIPLANE_STATE_DIR']) / node / 'lock'}; waited 1 s"]
    assert "race-b" not in {f["name"] for f in json.loads(cli("function", "list", "-o",
                                                                "json").stdout)}


def test_twenty_attaches_at_once_keep_maps_and_store_equal(world):
    """Each round: 20 attaches (half on ENIs that exist, half creating new ones) and, from the
    second round on, 4 detaches of the previous round's functions, all started at once."""
    _, node, cli = world
    expected = {f["name"] for f in json.loads(cli("function", "list", "-o", "json").stdout)}
    landed = started = 0
    for rnd in range(3):
        procs = []
        for i in range(20):
            subnet, groups = PAIRS[(rnd * 10 + i) % len(PAIRS)]
            args = ["function", "attach", f"r{rnd}-fn{i}", "--subnet", subnet]
            for g in groups:
                args += ["--sg", g]
            procs.append((f"r{rnd}-fn{i}", True, start(node, *args)))
        if rnd:
            for i in range(16, 20):
                name = f"r{rnd - 1}-fn{i}"
                procs.append((name, False, start(node, "function", "detach", name)))
        started += len(procs)
        for name, attach, p in procs:
            out, err = p.communicate(timeout=120)
            if assert_one_line_or_ok(p, out, err):
                landed += 1
                if attach:
                    expected.add(name)
                else:
                    expected.discard(name)
        assert_maps_equal_store(cli)
        assert {f["name"] for f in json.loads(cli("function", "list", "-o", "json").stdout)} \
            == expected
    assert landed > started // 2  # queueing, not failing, is the normal outcome
