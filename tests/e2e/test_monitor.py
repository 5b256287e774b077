"""`eniplane monitor -o json` shows a real drop from a lab environment: an environment whose
security group allows nothing pings the VPC's server, and the monitor (a process of its own,
reading the pinned ring buffer) prints the drop with its reason, worker, VNI, ENI and addresses;
SIGTERM ends it with exit 0. `events set` reaches the datapath, `events show` reports it, bad
values exit 2. The module has a lab and a node of its own."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from clitools import PY, lab_with_function, one_tenant
from eniplane.datapath import Datapath
from eniplane.lab import VPC_SERVER, WORKER_IPS

ENV_ADDR = "172.16.0.2"


def configuration() -> dict:
    return one_tenant([])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with lab_with_function(tmp_path_factory.mktemp("monitor"), "mon", configuration(),
                           ENV_ADDR) as w:
        yield w


def test_monitor_shows_a_real_drop(world):
    lab, eni = world["lab"], world["eni"]
    mon = subprocess.Popen([PY, "-m", "eniplane", "monitor", "--drops", "--eni", eni["id"],
                            "-o", "json", "--node", world["node"]],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # the monitor has mapped the ring buffer
        lab.run(world["env"], ["ping", "-c", "2", "-i", "0.2", "-W", "1", VPC_SERVER])
        time.sleep(0.5)
        mon.send_signal(signal.SIGTERM)
        out, err = mon.communicate(timeout=10)
    finally:
        if mon.poll() is None:
            mon.kill()
    assert mon.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert {e["eni"] for e in events} == {eni["id"]}  # the environment's IPv6 chatter too
    denied = [e for e in events if e["reason"] == "drop_sg_denied"]
    assert len(denied) == 2, events
    ev = denied[0]
    assert (ev["kind"], ev["direction"]) == ("drop", "fabric")
    assert (ev["worker"], ev["vni"], ev["eni"]) == (WORKER_IPS["w1"], eni["vni"], eni["id"])
    assert (ev["proto"], ev["src"], ev["dst"], ev["icmp_type"]) == \
        ("icmp", ENV_ADDR, VPC_SERVER, 8)


def test_events_set_reaches_the_datapath(world):
    cli, lab = world["cli"], world["lab"]
    try:
        cli("events", "set", "--flows", "on", "--rate", "7")
        want = {"drops": True, "flows": True, "rate": 7}
        assert json.loads(cli("events", "show", "-o", "json").stdout) == want
        with Datapath(world["node"], lab.node_ns) as dp:
            assert dp.events_settings() == want
        bad = cli("events", "set", "--rate", "-1", check=False)
        assert bad.returncode == 2
        assert json.loads(cli("events", "show", "-o", "json").stdout) == want
        assert cli("events", "set", check=False).returncode == 2
    finally:
        cli("events", "set", "--flows", "off", "--rate", "100")


def test_stats_watch_json_lines_show_rates(world):
    p = subprocess.Popen([PY, "-m", "eniplane", "stats", "--watch", "-i", "0.3", "-o", "json",
                          "--node", world["node"]], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        world["lab"].run(world["env"], ["ping", "-c", "3", "-i", "0.2", "-W", "1", VPC_SERVER])
        time.sleep(0.7)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert any(line["rates"].get("drop_sg_denied", 0) > 0 for line in lines), lines
