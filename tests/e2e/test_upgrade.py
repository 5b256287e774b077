"""`eniplane upgrade` in a lab: a steady UDP stream through an established flow loses nothing
while the programs are swapped, the flow keeps its NAT port and its counters, and a build whose
pinned map layout differs is refused with the map named, the old programs still running.

The stream is one UDP socket in an environment sending a numbered datagram every 3 ms to the VPC
server's echo port and counting the echoes by number; "0 lost" means every number came back.
A new build is made by copying bpf/ and changing a comment (another hash, the same programs):
the upgrade then runs because the sources changed, as after a software update."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from clitools import lab_with_function, one_tenant

from eniplane import loader, netlink, paths
from eniplane.datapath import Datapath
from eniplane.lab import UDP_ECHO_PORT, VPC_CIDR, VPC_SERVER, Lab

PY = sys.executable
ENV_ADDR = "172.16.0.2"
STREAM_PORT = 40007  # the stream's own source port: one flow, found by it
INTERVAL = 0.003


def configuration() -> dict:
    return one_tenant([{"proto": "udp", "ports": str(UDP_ECHO_PORT), "cidr": VPC_CIDR}])


# Sends datagram N every INTERVAL s from one socket until "stop" arrives on stdin, counts the
# echoes by N (the server echoes the payload after its own text), and prints one JSON line:
# how many were sent, the numbers never echoed, and the send time of each number (monotonic
# clock, shared by every process) so the test can tell which were sent during the upgrade.
STREAM = """
import json, select, socket, sys, threading, time
host, port, sport, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind(("0.0.0.0", sport))
got, sent_at = set(), []
def receive():
    while True:
        data = s.recv(2048)
        if not data:
            return
        got.add(int(data.rsplit(b" ", 1)[-1]))
threading.Thread(target=receive, daemon=True).start()
n, ready = 0, False
while True:
    if select.select([sys.stdin], [], [], 0)[0] and sys.stdin.readline().strip() == "stop":
        break
    sent_at.append(time.monotonic())
    s.sendto(b"seq %d" % n, (host, port))
    n += 1
    if not ready and got:
        print("ready", flush=True); ready = True
    time.sleep(interval)
time.sleep(1.0)  # the last echoes are on their way
print(json.dumps({"sent": n, "missing": sorted(set(range(n)) - got), "sent_at": sent_at}),
      flush=True)
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with lab_with_function(tmp_path_factory.mktemp("upgrade"), "upg", configuration(),
                           ENV_ADDR) as w:
        yield w


def _new_build(tmp, name: str, edit=None):
    """A copy of bpf/ whose hash differs from the running build's (a comment), optionally
    edited further."""
    d = tmp / name
    shutil.copytree(loader.bpf_dir(), d)
    src = d / "eniplane.c"
    src.write_text(src.read_text() + f"\n/* build {name} */\n")
    if edit:
        edit(d)
    return d


def _prog_ids(w) -> dict[str, int]:
    return {i: netlink.link_get(w["lab"].node_ns, i)["xdp_prog_id"] for i in ("fab0", "vpca")}


def _pinned_ids(node: str) -> dict[str, int]:
    from eniplane import bpfsys

    out = {}
    for name in loader.PROGRAMS:
        fd = bpfsys.obj_get(str(paths.progs_dir(node) / name))
        try:
            out[name] = bpfsys.prog_info(fd).id
        finally:
            os.close(fd)
    return out


def _stream_flow(w) -> dict:
    with Datapath(w["node"], w["lab"].node_ns) as dp:
        flows = [f for f in dp.flows(vni=w["eni"]["vni"]) if f["env_port"] == STREAM_PORT]
    assert len(flows) == 1, flows
    return flows[0]


def _stats(w) -> dict[str, int]:
    with Datapath(w["node"], w["lab"].node_ns) as dp:
        return dp.stats()


def _echo(w) -> str:
    return w["lab"].exec(w["env"], [PY, "-m", "eniplane.labserve", "udp", VPC_SERVER,
                                    str(UDP_ECHO_PORT), "still-there"])


def test_upgrade_under_a_steady_stream_loses_nothing_and_keeps_the_flow(world, monkeypatch):
    w = world
    monkeypatch.setenv("ENIPLANE_BPF_DIR", str(_new_build(w["tmp"], "next")))
    status = json.loads(w["cli"]("status", "-o", "json").stdout)
    assert not status["build"]["up_to_date"]  # bpf/ changed: the running build is not current
    ids_before, pins_before = _prog_ids(w), _pinned_ids(w["node"])
    p = subprocess.Popen(["ip", "netns", "exec", w["env"], PY, "-c", STREAM, VPC_SERVER,
                          str(UDP_ECHO_PORT), str(STREAM_PORT), str(INTERVAL)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        time.sleep(0.3)  # established, and counted, before the snapshot
        flow0, stats0 = _stream_flow(w), _stats(w)
        t0 = time.monotonic()
        up = w["cli"]("upgrade", "-o", "json")
        t1 = time.monotonic()
        time.sleep(0.3)
        p.stdin.write("stop\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    res = json.loads(out)
    during = sum(t0 <= t <= t1 for t in res["sent_at"])
    print(f"upgrade took {t1 - t0:.2f} s; sent {res['sent']}, {during} during the upgrade; "
          f"missing {res['missing'][:20]}")
    assert during >= 100, (t1 - t0, during)  # the stream really ran through the swap
    assert res["missing"] == [], res["missing"]

    rep = json.loads(up.stdout)
    assert rep["changed"], rep
    assert rep["build"]["new"] == loader.build_hash({"MAX_FLOWS": loader.DEFAULT_MAX_FLOWS})
    ids_after = _prog_ids(w)
    assert all(ids_after[i] != ids_before[i] for i in ids_before), (ids_before, ids_after)
    assert {i["ifname"]: (i["old_id"], i["new_id"]) for i in rep["interfaces"]} == {
        i: (ids_before[i], ids_after[i]) for i in ids_before}
    # the pins now hold the running programs, and the old ones are gone
    pins_after = _pinned_ids(w["node"])
    assert pins_after["xdp_fabric"] == ids_after["fab0"] == rep["programs"]["xdp_fabric"]["new_id"]
    assert pins_after["xdp_vpc"] == ids_after["vpca"]
    assert not set(pins_after.values()) & set(pins_before.values())
    assert not loader.staged_progs_dir(w["node"]).exists()

    # the same flow (same NAT port) carried the whole stream, and no counter went back
    flow1, stats1 = _stream_flow(w), _stats(w)
    assert flow1["nat_port"] == flow0["nat_port"] and flow1["eni_addr"] == flow0["eni_addr"]
    assert flow1["tx_packets"] - flow0["tx_packets"] >= during
    assert flow1["rx_packets"] - flow0["rx_packets"] >= during
    assert all(stats1[k] >= v for k, v in stats0.items()), {
        k: (v, stats1[k]) for k, v in stats0.items() if stats1[k] < v}
    assert stats1["fwd_established"] - stats0["fwd_established"] >= during
    assert stats1.get("fwd_new_flow", 0) == stats0.get("fwd_new_flow", 0)

    status = json.loads(w["cli"]("status", "-o", "json").stdout)
    assert status["build"]["up_to_date"] and status["build"]["running"] == rep["build"]["new"]
    assert all(i["attached"] for i in status["interfaces"])
    # a second upgrade of the same build has nothing to do and changes nothing
    again = json.loads(w["cli"]("upgrade", "-o", "json").stdout)
    assert not again["changed"] and _prog_ids(w) == ids_after


def test_a_node_of_a_build_with_fewer_programs_upgrades_in_place(world, monkeypatch):
    """A node brought up before xdp_fabric_long existed has neither its pin nor the fabric_long
    program array: status still reads it, and upgrade adds both, names the new map, and the node
    forwards new flows (which take the long way) afterwards."""
    w = world
    node = w["node"]
    assert "still-there" in _echo(w)
    (paths.progs_dir(node) / loader.PROG_FABRIC_LONG).unlink()  # as the earlier build pinned
    (paths.maps_dir(node) / "fabric_long").unlink()
    status = json.loads(w["cli"]("status", "-o", "json").stdout)
    assert loader.PROG_FABRIC_LONG not in status["programs"] and "xdp_fabric" in status["programs"]
    assert "fabric_long" not in {m["name"] for m in status["maps"]}
    with Datapath(node, w["lab"].node_ns) as dp:  # what the metrics read
        assert "fabric_long" not in {m["name"] for m in dp.map_levels()}
    monkeypatch.setenv("ENIPLANE_BPF_DIR", str(_new_build(w["tmp"], "fewer")))
    up = w["cli"]("upgrade", "-o", "json", check=False)
    assert up.returncode == 0, up.stderr
    rep = json.loads(up.stdout)
    assert rep["changed"] and "fabric_long" in rep["maps_added"], rep
    assert rep["programs"][loader.PROG_FABRIC_LONG]["old_id"] is None
    assert set(_pinned_ids(node)) == set(loader.PROGRAMS)
    assert "still-there" in _echo(w)


def test_a_node_without_the_kernel_reaper_sweeps_then_upgrades_to_it(world, monkeypatch):
    """A node brought up before xdp_flow_reap existed has neither its pin nor reap_batch and
    reap_stats: `flows sweep` still sweeps (from user space) and says what to run; upgrade adds
    the program and both maps, and the next sweep runs in the kernel."""
    w = world
    node = w["node"]
    assert "still-there" in _echo(w)
    (paths.progs_dir(node) / loader.PROG_FLOW_REAP).unlink()  # as the earlier build pinned
    for m in ("reap_batch", "reap_stats"):
        (paths.maps_dir(node) / m).unlink()
    status = json.loads(w["cli"]("status", "-o", "json").stdout)
    assert loader.PROG_FLOW_REAP not in status["programs"] and "xdp_fabric" in status["programs"]
    counters = json.loads(w["cli"]("stats", "-o", "json").stdout)["counters"]
    assert not [k for k in counters if k.startswith("reap_")], counters
    p = w["cli"]("flows", "sweep", "-o", "json")
    assert json.loads(p.stdout)["reaper"] == "user space"
    assert "predate the kernel reaper" in p.stderr and "eniplane upgrade" in p.stderr, p.stderr
    monkeypatch.setenv("ENIPLANE_BPF_DIR", str(_new_build(w["tmp"], "noreaper")))
    up = w["cli"]("upgrade", "-o", "json", check=False)
    assert up.returncode == 0, up.stderr
    rep = json.loads(up.stdout)
    assert rep["changed"] and {"reap_batch", "reap_stats"} <= set(rep["maps_added"]), rep
    assert rep["programs"][loader.PROG_FLOW_REAP]["old_id"] is None
    assert set(_pinned_ids(node)) == set(loader.PROGRAMS)
    p = w["cli"]("flows", "sweep", "-o", "json")
    assert json.loads(p.stdout)["reaper"] == "kernel" and "predate" not in p.stderr
    counters = json.loads(w["cli"]("stats", "-o", "json").stdout)["counters"]
    assert "reap_removed_sweep" in counters and "reap_kept_changed" in counters
    assert "still-there" in _echo(w)


def test_a_changed_map_layout_is_refused_and_the_old_programs_keep_running(world, monkeypatch):
    """flow_guard grows by 8 bytes in the new build: the upgrade names the map and both sizes,
    exits 1, and leaves the attached programs, the pins and the maps as they were."""
    w = world

    def grow_flow_guard(d):
        types = (d / "types.h").read_text()
        assert "    __u64 swept;" in types and "sizeof(struct flow_guard) == 40" in types
        types = types.replace("    __u64 swept;", "    __u64 swept;\n    __u64 extra;")
        types = types.replace("sizeof(struct flow_guard) == 40", "sizeof(struct flow_guard) == 48")
        (d / "types.h").write_text(types)

    assert "still-there" in _echo(w)
    ids_before, pins_before = _prog_ids(w), _pinned_ids(w["node"])
    maps_before = sorted(os.listdir(paths.maps_dir(w["node"])))
    build_before = json.loads(w["cli"]("status", "-o", "json").stdout)["build"]["running"]
    monkeypatch.setenv("ENIPLANE_BPF_DIR", str(_new_build(w["tmp"], "layout", grow_flow_guard)))
    p = w["cli"]("upgrade", check=False)
    assert p.returncode == 1, (p.returncode, p.stderr)
    err = p.stderr
    assert err.startswith("eniplane: error: upgrade refused, nothing was changed: "), err
    assert "flow_guard" in err and "40-byte values" in err and "has 4 and 48" in err, err
    assert _prog_ids(w) == ids_before and _pinned_ids(w["node"]) == pins_before
    assert sorted(os.listdir(paths.maps_dir(w["node"]))) == maps_before
    assert not loader.staged_progs_dir(w["node"]).exists()
    status = json.loads(w["cli"]("status", "-o", "json").stdout)
    assert status["build"]["running"] == build_before and not status["build"]["up_to_date"]
    assert "still-there" in _echo(w)  # the old programs still forward


def test_a_program_that_is_not_the_nodes_is_never_replaced(world):
    """Someone else's XDP program on one of the node's interfaces: the upgrade refuses before
    loading anything, naming the interface, and replaces nothing anywhere."""
    from eniplane import bpfsys

    w = world
    ns = w["lab"].node_ns
    ids_before = _prog_ids(w)
    mine = bpfsys.prog_get_fd_by_id(ids_before["vpca"])
    other = bpfsys.load_xdp_pass()
    try:
        netlink.xdp_replace(ns, "vpca", other, mine, "native")
        foreign = netlink.link_get(ns, "vpca")["xdp_prog_id"]
        assert foreign != ids_before["vpca"]
        p = w["cli"]("upgrade", "--force", check=False)
        assert p.returncode == 1, p.stderr
        assert "vpca" in p.stderr and f"id {foreign}" in p.stderr and "xdp_vpc" in p.stderr
        assert _prog_ids(w) == {**ids_before, "vpca": foreign}
        assert not loader.staged_progs_dir(w["node"]).exists()
        # and the swap itself only happens when the expected program is the attached one
        with pytest.raises(netlink.NetlinkError, match="not the one expected"):
            netlink.xdp_replace(ns, "vpca", mine, mine, "native")
    finally:
        netlink.xdp_replace(ns, "vpca", mine, other, "native")
        os.close(mine)
        os.close(other)
    assert _prog_ids(w) == ids_before


def test_an_upgrade_that_stopped_after_a_swap_is_finished_by_the_next(world):
    """A crash between swapping an interface and replacing the pins leaves an interface running
    a program that is not pinned: `needed` sees it even when the build is current, and the next
    upgrade (not forced) swaps every interface to one build and pins it."""
    from eniplane import bpfsys, upgrade

    w = world
    node, ns = w["node"], w["lab"].node_ns
    if upgrade.needed(node):  # the sources of this checkout, whatever ran before
        upgrade.upgrade(node)
    assert not upgrade.needed(node)
    ids_before = _prog_ids(w)
    staged = loader.compile_staged(node, {"MAX_FLOWS": loader.DEFAULT_MAX_FLOWS})
    try:
        mine = bpfsys.prog_get_fd_by_id(ids_before["vpca"])
        try:
            netlink.xdp_replace(ns, "vpca", staged["xdp_vpc"], mine, "native")
        finally:
            os.close(mine)
        half = bpfsys.prog_info(staged["xdp_vpc"]).id
    finally:
        for fd in staged.values():
            os.close(fd)
    assert upgrade.needed(node)
    rep = upgrade.upgrade(node)
    assert rep["changed"]
    ids = _prog_ids(w)
    assert ids["vpca"] not in (half, ids_before["vpca"]) and ids["fab0"] != ids_before["fab0"]
    assert _pinned_ids(node)["xdp_vpc"] == ids["vpca"]
    assert not loader.staged_progs_dir(node).exists()
    assert not upgrade.needed(node)
    assert "still-there" in _echo(w)


def test_a_generic_mode_node_is_upgraded_in_generic_mode_and_down_detaches_it():
    """Generic (skb) mode, what a NIC without native XDP gets: the swap must name that mode,
    and `down` too (before the mode was read back, a generic program stayed attached after
    `down`, which believed it had detached it)."""
    from eniplane import node as nodemod, upgrade

    with Lab.create(servers=False) as lab:
        name, ns = f"{lab.prefix}-gen", lab.node_ns
        nodemod.up(name, lab.fabric_if, lab.fabric_ip, ns, mode="generic")
        try:
            nodemod.attach_vpc_if(name, "vpca", mode="generic")
            before = {i: netlink.link_get(ns, i) for i in ("fab0", "vpca")}
            assert all(v["xdp_mode"] == "generic" for v in before.values()), before
            rep = upgrade.upgrade(name, force=True)
            assert {i["ifname"]: i["mode"] for i in rep["interfaces"]} == {
                "fab0": "generic", "vpca": "generic"}
            after = {i: netlink.link_get(ns, i) for i in ("fab0", "vpca")}
            assert all(after[i]["xdp_mode"] == "generic" and
                       after[i]["xdp_prog_id"] not in (0, before[i]["xdp_prog_id"])
                       for i in after), (before, after)
        finally:
            nodemod.down(name)
        assert all(netlink.link_get(ns, i)["xdp_prog_id"] == 0 for i in ("fab0", "vpca"))
