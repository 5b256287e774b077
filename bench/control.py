"""Control-plane timings: function attach (new and reused ENI), apply of many ENIs, CLI start,
and function attach through the agent's API.

Contract: wall-clock times of what an operator runs, medians of several runs, against a node that
is up in the benchmark topology, with a store of this run's own (ENIPLANE_STATE_DIR). The API
step runs `eniplane agent` as a process and times `api_calls` attaches on one kept-alive Unix
socket connection, as a scheduler would make them: on a reused ENI (each a new function on the
same subnet and group) and on a new ENI (a group set no ENI has; detached again, untimed, so the
next is new too); p50 and p99 in milliseconds (goals: p99 < 20 ms reused, < 100 ms new).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

from . import topo as T


def _cli(node: str | None, *args: str) -> float:
    t = time.monotonic()
    subprocess.run([sys.executable, "-m", "eniplane", *args,
                    *(["--node", node] if node else [])], check=True, capture_output=True)
    return time.monotonic() - t


def world(n_enis: int) -> dict:
    """A declarative state with n_enis distinct (subnet, group) pairs in one VPC."""
    per_subnet = 250
    n_subnets = max(1, -(-n_enis // per_subnet))
    n_groups = min(per_subnet, n_enis)
    return {
        "vpcs": [{"id": "vpc-bench", "cidr": "10.0.0.0/8", "iface": "vpca",
                  "gateway": T.SERVER}],
        "subnets": [{"id": f"sub-{i}", "vpc": "vpc-bench", "cidr": f"10.{1 + i // 256}.{i % 256}.0/24"}
                    for i in range(n_subnets)],
        "security_groups": [{"id": f"sg-{g}", "vpc": "vpc-bench",
                             "egress": [{"proto": "tcp", "ports": str(1000 + g),
                                         "cidr": "10.0.0.0/16"}], "ingress": []}
                            for g in range(n_groups)],
        "workers": [T.GEN_IP],
        "functions": [{"name": f"fn-{i}", "subnets": [f"sub-{i // per_subnet}"],
                       "security_groups": [f"sg-{i % n_groups}"]} for i in range(n_enis)],
    }


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def _post(c: http.client.HTTPConnection, path: str, body: dict | None = None) -> float:
    t = time.perf_counter()
    c.request("POST", path, body=json.dumps(body or {}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"POST {path}: {r.status} {data.decode()}")
    return time.perf_counter() - t


def _percentiles(seconds: list[float]) -> dict:
    ms = sorted(x * 1000 for x in seconds)
    return {"p50_ms": round(ms[len(ms) // 2], 2),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2), "calls": len(ms)}


def api_attach(node: str, state: str, calls: int, progress=print) -> dict:
    """Attach through the agent's API: `calls` on a reused ENI, `calls` on new ones."""
    sock = os.path.join(state, "api.sock")
    agent = subprocess.Popen([sys.executable, "-m", "eniplane", "agent", "--node", node,
                              "--socket", sock, "--metrics", "off"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        c = _UnixConnection(sock)
        deadline = time.monotonic() + 60
        while True:
            try:
                c.request("GET", "/readyz")
                r = c.getresponse()
                r.read()
                if r.status == 200:
                    break
            except OSError:
                c.close()
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not get ready: {agent.stderr.read().decode()}")
            time.sleep(0.05)
        reused = [_post(c, f"/v1/functions/api-re-{i}/attach",
                        {"subnets": ["sub-0"], "security_groups": ["sg-0"]})
                  for i in range(calls)]
        new = []
        for i in range(calls):
            new.append(_post(c, f"/v1/functions/api-new-{i}/attach",
                             {"subnets": ["sub-0"], "security_groups": ["sg-1", "sg-2"]}))
            _post(c, f"/v1/functions/api-new-{i}/detach")
        c.close()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    res = {"reused_eni": _percentiles(reused), "new_eni": _percentiles(new)}
    progress(f"API attach ({calls} calls each): reused ENI p50 {res['reused_eni']['p50_ms']} ms "
             f"p99 {res['reused_eni']['p99_ms']} ms; new ENI p50 {res['new_eni']['p50_ms']} ms "
             f"p99 {res['new_eni']['p99_ms']} ms")
    return res


def run(n_enis: int = 10_000, repeats: int = 5, progress=print, api_calls: int = 1000) -> dict:
    res: dict = {}
    state = tempfile.mkdtemp(prefix="eniplane-bench-state-")
    old = os.environ.get("ENIPLANE_STATE_DIR")
    os.environ["ENIPLANE_STATE_DIR"] = state
    try:
        with T.Topo() as t:
            t.eniplane().close()
            node = t.node_name
            doc = world(4)
            path = os.path.join(state, "small.yaml")
            with open(path, "w") as f:
                yaml.safe_dump(doc, f)
            _cli(node, "apply", "-f", path)
            new, reused = [], []
            for i in range(repeats):
                new.append(_cli(node, "function", "attach", f"new-{i}", "--subnet", "sub-0",
                                "--sg", f"sg-{i % 4}", "--sg", f"sg-{(i + 1) % 4}"))
                _cli(node, "function", "detach", f"new-{i}")
                reused.append(_cli(node, "function", "attach", f"re-{i}", "--subnet", "sub-0",
                                   "--sg", "sg-0"))
            res["api_attach"] = api_attach(node, state, api_calls, progress)
            res["attach_new_eni_s"] = statistics.median(new)
            res["attach_reused_eni_s"] = statistics.median(reused)
            progress(f"attach: new ENI {res['attach_new_eni_s']:.3f} s, "
                     f"reused {res['attach_reused_eni_s']:.3f} s")
            big = os.path.join(state, "big.yaml")
            with open(big, "w") as f:
                yaml.safe_dump(world(n_enis), f)
            res["apply_enis"] = n_enis
            res["apply_s"] = _cli(node, "apply", "-f", big)
            res["apply_noop_s"] = _cli(node, "apply", "-f", big)
            progress(f"apply {n_enis} ENIs: {res['apply_s']:.2f} s (again: "
                     f"{res['apply_noop_s']:.2f} s)")
            res["cli_help_s"] = statistics.median(
                [_cli(None, "--help") for _ in range(repeats)])
            res["cli_stats_s"] = statistics.median(
                [_cli(node, "stats", "-o", "json") for _ in range(repeats)])
            progress(f"cold start: --help {res['cli_help_s']:.3f} s, stats "
                     f"{res['cli_stats_s']:.3f} s")
    finally:
        if old is None:
            os.environ.pop("ENIPLANE_STATE_DIR", None)
        else:
            os.environ["ENIPLANE_STATE_DIR"] = old
        import shutil
        shutil.rmtree(state, ignore_errors=True)
    return res
