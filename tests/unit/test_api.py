"""The agent's API without a datapath: served by uvicorn on a real Unix socket over a store of the
test's own (the node is not up, so changes are stored only), with the CLI's validation and
messages, domain errors mapped to HTTP statuses, shape errors as 422, mutations through the
agent's run_change, health from the agent, latency observed; sd_notify to a real datagram socket;
the agent's option parsing."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, Histogram

from eniplane import agent as agentmod
from eniplane import api, ops, sdnotify
from eniplane.config import InvalidDocument
from eniplane.errors import (AlreadyExists, BpfError, EniplaneError, InvalidInput, NotFound,
                             UsageError)
from eniplane.reconcile import change

NODE = "unit"


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """The API app on tmp/api.sock; yields (request, context, changes run)."""
    import uvicorn

    monkeypatch.setenv("ENIPLANE_STATE_DIR", str(tmp_path / "state"))

    def world(st):
        st.add_vpc("vpc-a", "10.0.0.0/16", "vpca", "10.0.0.1")
        st.add_subnet("sub-a", "vpc-a", "10.0.1.0/24")
        st.add_sg("sg-a", "vpc-a")
        st.add_worker("100.64.0.11")

    change(NODE, world)
    registry = CollectorRegistry()
    runs: list[int] = []
    ready = {"ok": False}

    def run_change(fn):
        runs.append(1)
        return fn()

    ctx = api.ApiContext(
        NODE, run_change, lambda: (True, {"alive": True}),
        lambda: (ready["ok"], {"ready": ready["ok"], **({} if ready["ok"] else
                                                        {"reason": "starting"})}),
        registry, Histogram("lat_seconds", "", ["method", "route", "code"], registry=registry))
    path = str(tmp_path / "api.sock")
    server = uvicorn.Server(uvicorn.Config(api.create_app(ctx), uds=path, log_level="warning",
                                           lifespan="off"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    def request(method: str, url: str, body=None):
        c = UnixConnection(path)
        c.request(method, url, body=None if body is None else json.dumps(body),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, json.loads(data) if data[:1] in (b"{", b"[") else data.decode()

    yield request, ready, runs
    server.should_exit = True
    t.join(5)


def test_attach_place_detach_go_through_the_store_and_run_change(served):
    request, _, runs = served
    status, doc = request("POST", "/v1/functions/fn-a/attach",
                          {"subnets": ["sub-a"], "security_groups": ["sg-a"]})
    assert status == 200 and doc["node_up"] is False and doc["warnings"] == []
    (eni,) = doc["enis"]
    assert (eni["subnet"], eni["address"], eni["security_groups"]) == ("sub-a", "10.0.1.4",
                                                                       ["sg-a"])
    assert request("POST", "/v1/functions/fn-a/place", {"workers": ["100.64.0.11"]})[1][
        "workers"] == ["100.64.0.11"]
    assert [f["workers"] for f in ops.list_functions(NODE)] == [["100.64.0.11"]]
    assert request("GET", "/v1/functions")[1][0]["enis"] == [eni]
    assert request("GET", "/v1/enis")[1][0]["flow_entries"] is None  # the node is not up
    assert request("POST", "/v1/functions/fn-a/unplace",
                   {"workers": ["100.64.0.11"]})[1]["workers"] == []
    assert request("POST", "/v1/functions/fn-a/detach")[0] == 200
    assert ops.list_functions(NODE) == []
    assert len(runs) == 4  # every mutation, and nothing else, through the agent's run_change


def test_domain_errors_carry_the_clis_message_and_a_status(served, cli):
    request, _, _ = served
    body = {"subnets": ["sub-x"], "security_groups": ["sg-a"]}
    status, doc = request("POST", "/v1/functions/fn-a/attach", body)
    assert (status, doc) == (404, {"error": "subnet sub-x does not exist", "kind": "NotFound"})
    status, doc = request("POST", "/v1/functions/bad%20name/attach",
                          {"subnets": ["sub-a"], "security_groups": ["sg-a"]})
    assert status == 400 and doc["kind"] == "InvalidInput" and "bad name" in doc["error"]
    status, doc = request("POST", "/v1/functions/ghost/detach")
    assert (status, doc["error"]) == (404, "function ghost does not exist")
    # the CLI says the same (its own store: the cli fixture's)
    r = cli("function", "detach", "ghost", code=1)
    assert r.output.strip() == "eniplane: error: function ghost does not exist"
    assert request("GET", "/v1/stats?eni=eni-none")[1]["error"] == "ENI eni-none does not exist"


def test_shape_errors_are_422_with_one_line_each(served):
    request, _, runs = served
    status, doc = request("POST", "/v1/functions/fn-a/attach",
                          {"subnets": [], "security_groups": ["sg-a"], "colour": "red"})
    assert status == 422 and doc["kind"] == "InvalidRequest"
    lines = doc["error"].splitlines()
    assert any(ln.startswith("body.subnets:") for ln in lines)
    assert any(ln.startswith("body.colour:") for ln in lines)
    assert request("GET", "/v1/flows?limit=-1")[0] == 422
    assert runs == []


def test_error_statuses():
    assert api.status_of(NotFound("x")) == 404
    assert api.status_of(AlreadyExists("x")) == 409
    assert api.status_of(InvalidInput("x")) == 400
    assert api.status_of(InvalidDocument(["a: b"])) == 400
    assert api.status_of(UsageError("x")) == 400
    assert api.status_of(BpfError("x")) == 500
    assert api.status_of(EniplaneError("x")) == 500


def test_health_readiness_metrics_and_openapi(served):
    request, ready, _ = served
    assert request("GET", "/healthz") == (200, {"alive": True})
    assert request("GET", "/readyz") == (503, {"ready": False, "reason": "starting"})
    ready["ok"] = True
    assert request("GET", "/readyz") == (200, {"ready": True})
    status, text = request("GET", "/metrics")
    assert status == 200 and 'lat_seconds_count{code="503",method="GET",route="/readyz"} 1.0' \
        in text
    paths = request("GET", "/openapi.json")[1]["paths"]
    assert {"/v1/functions/{name}/attach", "/v1/functions/{name}/detach",
            "/v1/functions/{name}/place", "/v1/functions/{name}/unplace", "/v1/functions",
            "/v1/enis", "/v1/flows", "/v1/stats", "/v1/settings"} <= set(paths)


def test_settings_include_the_stored_up_parameters(served):
    request, _, _ = served
    assert request("GET", "/v1/settings")[1]["node"] is None
    ops_params = {"fabric_if": "fab0", "fabric_ip": "100.64.0.1", "netns": None, "mode": "auto",
                  "max_flows": 4096}
    change(NODE, lambda st: st.set_node(**ops_params))
    assert request("GET", "/v1/settings")[1]["node"] == ops_params


# ---- sd_notify --------------------------------------------------------------------------------
@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_sends_one_datagram(tmp_path, monkeypatch, abstract):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"\0eniplane-test-{id(s)}" if abstract else str(tmp_path / "notify")
    s.bind(name)
    s.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name[1:] if abstract else name)
    try:
        assert sdnotify.notify("READY=1", "STATUS=serving")
        assert s.recv(100) == b"READY=1\nSTATUS=serving"
    finally:
        s.close()


def test_sd_notify_without_systemd_or_with_nobody_listening(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert sdnotify.notify("READY=1") is False


# ---- the agent's options ------------------------------------------------------------------------
def test_addresses_and_default_sockets():
    assert agentmod.parse_address("127.0.0.1:9469", "--metrics") == ("127.0.0.1", 9469)
    assert agentmod.parse_address("[::1]:80", "--metrics") == ("::1", 80)
    assert agentmod.parse_address("off", "--metrics") is None
    for bad in ("9469", "host:", ":80", "h:99999", "h:x"):
        with pytest.raises(UsageError, match="--metrics must be HOST:PORT or off"):
            agentmod.parse_address(bad, "--metrics")
    assert str(agentmod.default_socket("default")) == "/run/eniplane/api.sock"
    assert str(agentmod.default_socket("n1")) == "/run/eniplane/n1/api.sock"


def test_a_live_socket_is_never_taken_over_and_a_stale_one_is(tmp_path):
    path = tmp_path / "api.sock"
    live = agentmod.bind_unix(path)
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(EniplaneError, match="another agent serves it"):
        agentmod.bind_unix(path)
    live.close()  # the file stays, nobody answers: stale
    agentmod.bind_unix(path).close()
