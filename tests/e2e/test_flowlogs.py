"""Flow logs of real traffic (issue 15 part 3): `eniplane flows log` runs as a process while an
environment behind the kernel's VXLAN device makes an HTTP request; the records in its files
match the flow in the datapath (ENI id, addresses, ports, protocol 6, packets and bytes equal
to the flow's counters, ACCEPT), a denied connection is one REJECT record, and the custom view
names the environment's address. The module has a lab and a node of its own."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clitools import PY, lab_with_function, one_tenant
from eniplane.datapath import Datapath
from eniplane.flowlogs import CUSTOM_FIELDS, DEFAULT_FIELDS
from eniplane.lab import HTTP_PORT, VPC_CIDR, VPC_SERVER, WORKER_IPS

ENV = "172.16.0.2"


def configuration() -> dict:
    return one_tenant([{"proto": "tcp", "ports": "80", "cidr": VPC_CIDR}])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with lab_with_function(tmp_path_factory.mktemp("flowlogs"), "fl", configuration(),
                           ENV) as w:
        yield w


class Logger:
    """`eniplane flows log` as an operator runs it, stopped with SIGINT (Ctrl-C)."""

    def __init__(self, node: str, directory: Path, *args: str) -> None:
        self.dir = directory
        self.p = subprocess.Popen([PY, "-m", "eniplane", "flows", "log", "--node", node,
                                   "--interval", "1", "--dir", str(directory), *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while "Ctrl-C stops" not in self._stderr_so_far() and time.monotonic() < deadline:
            assert self.p.poll() is None, self.p.stderr.read()
            time.sleep(0.1)

    def _stderr_so_far(self) -> str:
        import os
        import select

        if select.select([self.p.stderr], [], [], 0)[0]:
            self._err = getattr(self, "_err", "") + os.read(self.p.stderr.fileno(), 4096).decode()
        return getattr(self, "_err", "")

    def stop(self) -> str:
        self.p.send_signal(signal.SIGINT)
        _, err = self.p.communicate(timeout=20)
        assert self.p.returncode == 0, err
        return getattr(self, "_err", "") + err

    def lines(self) -> list[list[str]]:
        out = []
        for f in sorted(self.dir.glob("flows-*.log")):
            text = f.read_text().splitlines()
            out.append(text)
        return out


def http(world) -> str:
    return world["lab"].exec(world["env"], [PY, "-m", "eniplane.labserve", "http", VPC_SERVER,
                                            str(HTTP_PORT)])


def the_flow(world) -> dict:
    with Datapath(world["node"]) as dp:
        (f,) = [f for f in dp.flows(vni=world["eni"]["vni"]) if f["remote_port"] == HTTP_PORT]
    return f


def records(files: list[list[str]], names: tuple[str, ...]) -> list[dict[str, str]]:
    out = []
    for text in files:
        assert text[0] == " ".join(names)  # every file opens with its header
        out += [dict(zip(names, line.split(" "))) for line in text[1:]]
    return out


def test_an_http_request_is_logged_as_its_flow(world):
    log = Logger(world["node"], world["tmp"] / "default")
    try:
        assert http(world).startswith("vpc-a saw 10.0.1.")
        time.sleep(2.5)  # the flow goes quiet; at least one window ends after its last packet
    finally:
        err = log.stop()
    assert "flow log records written" in err
    f = the_flow(world)
    recs = records(log.lines(), DEFAULT_FIELDS)
    eni = world["eni"]["id"]
    mine = [r for r in recs if r["action"] == "ACCEPT" and r["protocol"] == "6"]
    out = [r for r in mine if (r["srcaddr"], r["srcport"], r["dstaddr"], r["dstport"]) ==
           (f["eni_addr"], str(f["nat_port"]), VPC_SERVER, str(HTTP_PORT))]
    back = [r for r in mine if (r["srcaddr"], r["srcport"], r["dstaddr"], r["dstport"]) ==
            (VPC_SERVER, str(HTTP_PORT), f["eni_addr"], str(f["nat_port"]))]
    assert out and back, recs
    for r in out + back:
        assert (r["version"], r["interface-id"], r["account-id"], r["log-status"]) == \
            ("2", eni, "-", "OK")
        assert int(r["start"]) <= int(r["end"]) <= time.time() + 1
    assert sum(int(r["packets"]) for r in out) == f["tx_packets"] > 0
    assert sum(int(r["bytes"]) for r in out) == f["tx_bytes"]
    assert sum(int(r["packets"]) for r in back) == f["rx_packets"] > 0
    assert sum(int(r["bytes"]) for r in back) == f["rx_bytes"]
    # windows in which the ENI carried nothing say so
    assert all(r["action"] == "-" and r["packets"] == "-" for r in recs
               if r["log-status"] == "NODATA")


def test_the_custom_view_names_the_environment_and_a_denial_is_a_reject(world):
    log = Logger(world["node"], world["tmp"] / "custom", "--format", "custom",
                 "--account-id", "123456789012")
    try:
        assert http(world).startswith("vpc-a saw")
        p = world["lab"].run(world["env"], [PY, "-m", "eniplane.labserve", "http", VPC_SERVER,
                                            "22", "--timeout", "1"])
        assert p.returncode == 1  # denied by the security group: dropped, never answered
        time.sleep(1.5)
    finally:
        log.stop()
    recs = records(log.lines(), CUSTOM_FIELDS)
    accepted = [r for r in recs if r["action"] == "ACCEPT" and r["dstport"] == str(HTTP_PORT)]
    assert accepted
    for r in accepted:
        assert (r["version"], r["account-id"], r["vpc-id"], r["subnet-id"],
                r["flow-direction"], r["pkt-srcaddr"], r["pkt-dstaddr"]) == \
            ("5", "123456789012", "vpc-a", "sub-a", "egress", ENV, VPC_SERVER)
    replies = [r for r in recs if r["action"] == "ACCEPT" and r["srcport"] == str(HTTP_PORT)]
    assert replies and all(r["pkt-dstaddr"] == ENV and r["flow-direction"] == "ingress"
                           for r in replies)
    rejects = [r for r in recs if r["action"] == "REJECT"]
    mine = [r for r in rejects if r["dstport"] == "22"]
    # the SYN and its retransmissions: one record per window they fell in (1 s windows here)
    assert mine and len({r["end"] for r in mine}) == len(mine), mine
    for r in mine:
        assert (r["srcaddr"], r["pkt-srcaddr"], r["dstaddr"], r["protocol"]) == \
            (world["eni"]["address"], ENV, VPC_SERVER, "6")
    assert sum(int(r["packets"]) for r in mine) >= 1


def test_json_lines_on_stdout(world):
    p = subprocess.Popen([PY, "-m", "eniplane", "flows", "log", "--node", world["node"],
                          "--interval", "1", "-o", "json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    http(world)
    time.sleep(2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    got = [d for d in docs if d["action"] == "ACCEPT" and d["dstport"] == HTTP_PORT]
    assert got and all(d["env_addr"] == ENV and d["worker"] == WORKER_IPS["w1"] and
                       d["interface-id"] == world["eni"]["id"] for d in got)
