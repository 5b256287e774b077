"""The benchmark harness in smoke mode (a few thousand packets): it must keep running and keep
producing its table, JSON and chart. No figure is asserted: this is not a timing test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_smoke(tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    p = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--json", str(out),
                        "--png", str(png)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(out.read_text())
    scen = {(r["direction"], r["scenario"]) for r in doc["throughput"]["results"]}
    assert scen == {(d, s) for d in ("forward", "return")
                    for s in ("ceiling", "state-floor", "eniplane", "linux")} \
        | {("forward", "eniplane-geneve")}
    # every scenario moved packets end to end (a broken path would count zero at the sink)
    assert all(r["mpps"] > 0 for r in doc["throughput"]["results"]), doc["throughput"]
    # the state floor kept per-flow state: each flow's entry made about once, then found
    for r in doc["throughput"]["results"]:
        if r["scenario"] == "state-floor":
            e = r["entries"]
            assert 0 < e["made"] <= 2 * r["flows"] and e["found"] > 10 * e["made"], r
    assert all(r["vs_state_floor"] for r in doc["throughput"]["ratios"])
    # the node's programs were timed in every scenario that has one (Linux has none)
    timed = {(r["direction"], r["flows"], r["scenario"]) for r in doc["throughput"]["results"]
             if r.get("program_ns", 0) > 0}
    assert timed == {(r["direction"], r["flows"], r["scenario"])
                     for r in doc["throughput"]["results"] if r["scenario"] != "linux"}
    # every pass says which phase of the host it met (bench.memlat beside the program times)
    assert all(set(r["memlat_ns"]) == {"4", "8", "16"} and min(r["memlat_ns"].values()) > 0
               for r in doc["throughput"]["results"])
    assert set(doc["cost"]["new_flow_ns"]) == {"1", "60", "300"}
    assert doc["scale"]["created"] == doc["scale"]["fill"] == 66_000  # past an ENI's limit
    assert doc["control"]["apply_enis"] == 20
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "per-packet cost" in p.stdout


def test_bench_ipv4_smoke(tmp_path):
    """Each IPv4 path's packet is checked to take its path before it is timed: a path that
    went elsewhere fails the step."""
    out = tmp_path / "ipv4.json"
    p = subprocess.run([sys.executable, "-m", "bench", "ipv4", "--smoke", "--json", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    ns = json.loads(out.read_text())["ipv4"]["ns"]
    assert {"est_fwd", "est_return", "later_fragment_fwd", "later_fragment_return",
            "time_exceeded_fwd", "time_exceeded_return", "frag_needed_fwd",
            "frag_needed_return", "icmp_error_fwd", "icmp_error_return"} <= set(ns)
    assert all(v > 0 for v in ns.values()), ns


def test_bench_forward_frames_vary_outer_and_inner_ports():
    """A fabric's VTEPs pick the outer UDP source port per flow from the inner headers (RFC
    7348), and the flows differ in their inner ports: the bench's forward generator sends what
    such a fabric sends, one outer port per flow, not one for all."""
    import socket

    sys.path.insert(0, str(REPO))
    from bench import throughput as TP
    from bench import topo as T
    from bench.gen import rfc4814_ports, vxlan_sport
    from eniplane import netlink

    with T.Topo() as t:
        ports = rfc4814_ports(4)
        g = TP._generator("xdp", t, "forward", ports)
        try:
            t._pass("node", "fab0")  # the veth takes XDP-sent frames only with a program
            with netlink.in_netns(t.ns["node"]):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
            s.bind(("fab0", 0))
            s.settimeout(5)
            g._send(8)
            seen = []
            while len(seen) < 8:
                f = s.recv(2048)
                if f[23] == 17 and int.from_bytes(f[36:38], "big") == 4789:
                    seen.append(tuple(int.from_bytes(f[o:o + 2], "big") for o in (34, 84, 86)))
            s.close()
        finally:
            g.close()
    assert seen == [(vxlan_sport(a, b), a, b) for a, b in ports] * 2, seen
    assert len({o for o, _, _ in seen}) == 4


def _ab(tmp_path, module: str, *args: str) -> dict:
    out = tmp_path / f"{module}.json"
    p = subprocess.run([sys.executable, "-m", module, "--flows", "1", "--rounds", "1",
                        "--seconds", "0.05", "--max-flows", "4096", "--json", str(out), *args],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())["1"]


def test_hot_ab_smoke(tmp_path):
    """bench.hot_ab: every case of both directions timed (the sinks took the packets), and the
    flows counted, with how many hold a slot."""
    got = _ab(tmp_path, "bench.hot_ab")
    slots = got.pop("slots")
    assert set(got) == {f"{d} {c}" for d in ("forward", "return")
                        for c in ("hot on", "hot off", "state floor")}
    assert all(v["ns"] > 0 for v in got.values()), got
    # the one flow is counted; whether it holds a slot depends on the CPUs the host may have
    # (with many, a 4,096-entry table lets the LRU evict from the start and fills no slot)
    assert slots["flows"] == 1 and slots["with_slot"] in (0, 1), slots


def test_floor_ab_smoke(tmp_path):
    """bench.floor_ab: every variant timed, the index + pool design (gen.c STATE_POOL) too."""
    got = _ab(tmp_path, "bench.floor_ab")
    assert "index + pool (a design, not a floor)" in got and "floor" in got
    assert all(v["ns"] > 0 for v in got.values()), got


def test_build_ab_smoke(tmp_path):
    """bench.build_ab: the same tree as both builds, each staged in two nodes (A B B A), each
    node timed both ways beside its own floor, and the tables that compare builds and nodes."""
    out = tmp_path / "build_ab.json"
    p = subprocess.run([sys.executable, "-m", "bench.build_ab", "--old", str(REPO), "--flows",
                        "16", "--rounds", "1", "--seconds", "0.05", "--max-flows", "4096",
                        "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(out.read_text())
    for d in ("forward", "return"):
        for build in ("old", "new"):
            assert all(v[0] > 0 for v in got[d][build].values()), got
            assert set(got[d][build]) == {"eniplane", "state-floor"}
        # a build's figure per round is the median of its nodes: A B B A staging
        assert sorted(got["nodes"][d]) == ["new#1", "new#2", "old#0", "old#3"], got["nodes"]
        for node in got["nodes"][d].values():
            assert set(node) == {"eniplane", "state-floor"} and node["eniplane"][0] > 0
    assert "| forward | new |" in p.stdout
    assert "| forward | old#3 |" in p.stdout  # the per-node table
