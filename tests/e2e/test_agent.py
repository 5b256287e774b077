"""`eniplane agent` as a process in the lab: it tells systemd it is ready (READY=1 on a real
$NOTIFY_SOCKET), answers /readyz on its Unix socket, attaches and places a function through the
API so that a real HTTP request from an environment passes, maps a domain error to the status and
the CLI's own message, serves /metrics that prometheus_client's parser reads, re-syncs when
another command changes the store, and on SIGTERM exits 0 at once while traffic keeps flowing.
Started again on a node that is down, it brings it up from the parameters `up` stored; with none
stored it refuses. One lab and one node for the module."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from clitools import configured_node, one_tenant
from eniplane import node as nodemod
from eniplane.datapath import Datapath
from eniplane.flowlogs import DEFAULT_FIELDS
from eniplane.lab import VPC_CIDR, VPC_SERVER, WORKER_IPS, Lab

PY = sys.executable
W1 = WORKER_IPS["w1"]


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def call(sock: str, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    c = UnixConnection(sock)
    try:
        c.request(method, path, body=None if body is None else json.dumps(body),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        c.close()


def configuration() -> dict:
    return one_tenant([{"proto": "tcp", "ports": "80", "cidr": VPC_CIDR}], function=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    """`eniplane agent` in a subprocess, with a NOTIFY_SOCKET of the test's own."""

    def __init__(self, node: str, tmp, name: str, *extra: str):
        self.sock = str(tmp / f"{name}.sock")
        self.port = free_port()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(tmp / f"{name}.notify"))
        self.notify.settimeout(0.1)
        self.log = open(tmp / f"{name}.log", "w+")
        env = dict(os.environ, NOTIFY_SOCKET=str(tmp / f"{name}.notify"))
        self.p = subprocess.Popen(
            [PY, "-m", "eniplane", "agent", "--node", node, "--socket", self.sock,
             "--metrics", f"127.0.0.1:{self.port}", "--sweep-interval", "1", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.messages: list[str] = []

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_notify(self, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while what not in self.messages:
            assert time.monotonic() < deadline, (what, self.messages, self.output())
            try:
                self.messages += self.notify.recv(4096).decode().split("\n")
            except socket.timeout:
                assert self.p.poll() is None or what == "STOPPING=1", self.output()

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait_notify("READY=1", timeout)
        assert call(self.sock, "GET", "/readyz") == (200, {"ready": True,
                                                          "node": self.node_name()})

    def node_name(self) -> str:
        return self.p.args[self.p.args.index("--node") + 1]

    def terminate(self) -> tuple[int, float]:
        t = time.monotonic()
        self.p.send_signal(signal.SIGTERM)
        code = self.p.wait(timeout=10)
        return code, time.monotonic() - t

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.notify.close()
        self.log.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agent")
    with Lab.create() as lab:
        node = f"{lab.prefix}-agent"
        with configured_node(lab, node, configuration(), tmp) as cli:
            yield {"lab": lab, "node": node, "cli": cli, "tmp": tmp}


def http_ok(lab: Lab, ns: str) -> bool:
    p = lab.run(ns, [PY, "-m", "eniplane.labserve", "http", VPC_SERVER, "80", "--timeout", "2"])
    return p.returncode == 0 and p.stdout.startswith("vpc-a saw 10.0.1.4:")


def test_the_agent_serves_the_api_and_leaves_the_datapath_running(world):
    from prometheus_client.parser import text_string_to_metric_families

    lab, node, cli = world["lab"], world["node"], world["cli"]
    logs = world["tmp"] / "flowlogs"
    agent = AgentProcess(node, world["tmp"], "a1", "--flow-logs", str(logs),
                         "--flow-log-interval", "60")
    try:
        agent.wait_ready()
        status, doc = call(agent.sock, "POST", "/v1/functions/fn-a/attach",
                           {"subnets": ["sub-a"], "security_groups": ["sg-a"], "workers": [W1]})
        assert status == 200 and doc["node_up"] and doc["workers"] == [W1], doc
        (eni,) = doc["enis"]
        env = lab.add_env("ag", "w1", eni["vni"], "172.16.0.2")
        assert http_ok(lab, env)
        status, flows = call(agent.sock, "GET", f"/v1/flows?eni={eni['id']}")
        assert status == 200 and any(f["remote"] == f"{VPC_SERVER}:80" for f in flows), flows
        status, enis = call(agent.sock, "GET", "/v1/enis")
        assert [(e["id"], e["functions"]) for e in enis] == [(eni["id"], ["fn-a"])]

        # a domain error: the CLI's message and exit 1, the API's 404 with the same text
        status, err = call(agent.sock, "POST", "/v1/functions/fn-b/attach",
                           {"subnets": ["sub-x"], "security_groups": ["sg-a"]})
        p = cli("function", "attach", "fn-b", "--subnet", "sub-x", "--sg", "sg-a", check=False)
        assert (status, err["kind"]) == (404, "NotFound") and p.returncode == 1
        assert p.stderr.strip() == f"eniplane: error: {err['error']}"
        status, err = call(agent.sock, "POST", "/v1/functions/fn-b/place", {"workers": []})
        assert status == 422 and "workers" in err["error"]

        # another command changes the store: the agent notices and re-syncs
        def store_syncs() -> float:
            families = {f.name: f for f in text_string_to_metric_families(scrape(agent.port))}
            return sum(s.value for s in families["eniplane_agent_reconciles"].samples
                       if s.name.endswith("_total") and s.labels.get("trigger") == "store")

        before = store_syncs()
        cli("sg", "rule", "add", "sg-a", "--egress", "--proto", "udp", "--ports", "7",
            "--cidr", VPC_CIDR)
        deadline = time.monotonic() + 5
        while store_syncs() == before:
            assert time.monotonic() < deadline, agent.output()
            time.sleep(0.2)

        text = scrape(agent.port)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        api = families["eniplane_agent_api_request_duration_seconds"]
        routes = {s.labels["route"] for s in api.samples if s.name.endswith("_count")}
        assert "/v1/functions/{name}/attach" in routes, routes
        assert "eniplane_agent_sweep_duration_seconds" in families  # --sweep-interval 1
        assert call(agent.sock, "GET", "/openapi.json")[1]["paths"]["/v1/enis"]

        with Datapath(node, lab.node_ns) as dp:
            (flow,) = [f for f in dp.flows(vni=eni["vni"]) if f["remote_port"] == 80]
        code, took = agent.terminate()
        assert code == 0 and took < 5, agent.output()
        agent.wait_notify("STOPPING=1", 1)
        assert not os.path.exists(agent.sock)
        # stopping wrote the window in progress: the request's flow, as the ENI saw it
        (text,) = [f.read_text().splitlines() for f in sorted(logs.glob("flows-*.log"))]
        assert text[0] == " ".join(DEFAULT_FIELDS)
        recs = [dict(zip(DEFAULT_FIELDS, line.split(" "))) for line in text[1:]]
        out = [r for r in recs if (r["srcaddr"], r["srcport"], r["dstaddr"], r["dstport"],
                                   r["protocol"]) == (flow["eni_addr"], str(flow["nat_port"]),
                                                      VPC_SERVER, "80", "6")]
        assert [(r["interface-id"], r["action"], r["log-status"], r["packets"], r["bytes"])
                for r in out] == [(eni["id"], "ACCEPT", "OK", str(flow["tx_packets"]),
                                   str(flow["tx_bytes"]))], recs
        assert nodemod.is_up(node) and http_ok(lab, env)  # the datapath goes on
    finally:
        agent.close()


def test_the_agent_brings_a_node_up_from_the_stored_parameters(world):
    lab, node, cli = world["lab"], world["node"], world["cli"]
    env = lab.envs["ag"]["ns"]  # the first test's environment and function
    cli("down")
    assert not http_ok(lab, env)
    agent = AgentProcess(node, world["tmp"], "a2")
    try:
        agent.wait_ready()
        assert nodemod.is_up(node) and http_ok(lab, env)
        assert agent.terminate()[0] == 0
    finally:
        agent.close()
    assert http_ok(lab, env)


def test_without_stored_parameters_the_agent_refuses(world, tmp_path):
    p = subprocess.run([PY, "-m", "eniplane", "agent", "--node", f"{world['lab'].prefix}-none",
                        "--socket", str(tmp_path / "s.sock"), "--metrics", "off"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "has no stored parameters: run `eniplane up" in p.stderr, p.stderr


def scrape(port: int) -> str:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        assert r.status == 200
        return r.read().decode()
    finally:
        c.close()
