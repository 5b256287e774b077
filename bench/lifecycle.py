"""The flow lifecycle's costs (issue 13): the fast path before and after, new flows, takeovers,
RST answers and the sweeper.

Contract: every per-packet figure is the kernel-reported duration of single-packet
BPF_PROG_TEST_RUN runs (cost.py explains repeat=1), the median of a batch.
- `compare(old, new)`: one node per checkout, each in a benchmark topology of its own and
  configured by that checkout's own control plane (a subprocess with its ctl/ first on
  PYTHONPATH: `python -m bench.lifecycle setup ...`), 60 security-group rules; then the same
  packets on both, in rounds that alternate which checkout goes first: established forward and
  return at 1 flow, new flows, and established forward and return over flows spread across a
  table of 64k. Per metric: the median over rounds of each round's median, and of the per-round
  ratios new/old.
- `costs()`: this checkout only: a takeover (a new flow whose probe is full and which takes an
  expired entry over), a RST answer (a segment with no flow), Datapath.sweep() per million flows
  (measured at `sweep_flows`, extrapolated linearly), and the established path while a sweeper
  runs in another process (pinned to another CPU), in rounds alternating with the sweeper
  stopped (SIGSTOP) and running.
The measuring process pins itself to CPU 0, as the other benchmarks share one core.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # bench/ is imported from here whatever the checkout
FILL = 64_000  # "64k flows", under the default per-ENI limit (65,000) both nodes run with


def _pythonpath(checkout: Path) -> dict:
    return dict(os.environ, PYTHONPATH=f"{checkout / 'ctl'}:{ROOT}")


def setup_node(node: str, ns: str, sink_mac: str, rules: int, max_flows: int) -> None:
    """What Topo.eniplane does, with the eniplane package first on sys.path (any checkout
    whose Datapath has these calls), and `rules` security-group rules."""
    from eniplane import node as nodemod
    from eniplane.datapath import Datapath

    from . import topo as T
    from .cost import rules_for

    nodemod.up(node, "fab0", T.FABRIC_IP, ns, defines={"MAX_FLOWS": max_flows})
    info = nodemod.attach_vpc_if(node, "vpca")
    with Datapath(node, ns) as dp:
        dp.set_vpc(info["ifindex"], 1, T.SERVER, info["mac"], info["slot"], gateway_mac=sink_mac)
        dp.add_worker(T.GEN_IP)
        dp.set_eni(T.VNI, 1, 1, T.ENI_IP)
        dp.sync_placements({(T.GEN_IP, T.VNI): 1})
        dp.set_sg_rules(T.VNI, rules_for(rules))


class Side:
    """One checkout's node in a topology of its own, and the packets timed on it."""

    def __init__(self, name: str, checkout: Path, rules: int, max_flows: int) -> None:
        from . import cost
        from . import topo as T

        self.name = name
        self.t = T.Topo()
        try:
            self.t.clear()
            subprocess.run([sys.executable, "-m", "bench.lifecycle", "setup", self.t.node_name,
                            self.t.ns["node"], self.t.mac[("sink", "s0")], str(rules),
                            str(max_flows)], env=_pythonpath(checkout), check=True, cwd=ROOT)
            self.r = cost.Runner(self.t)
        except BaseException:
            self.t.destroy()
            raise
        self.base = cost._fwd_packet(self.t, 1)
        self.hot = cost._fwd_packet(self.t, 40000)
        self.opened = 0  # flows _variant(base, i) opened so far, i < opened

    def fwd(self, pkts: list[bytes]) -> list[int]:
        return self.r.durations(self.r.fds["xdp_fabric"], pkts)

    def run_time(self) -> tuple[int, int]:
        """The kernel's run-time accounting of both programs together: (ns, runs). A tail call
        runs inside its caller's account."""
        from eniplane import bpfsys
        infos = [bpfsys.prog_info(fd) for fd in self.r.fds.values()]
        return sum(i.run_time_ns for i in infos), sum(i.run_cnt for i in infos)

    def ret(self, pkts: list[bytes]) -> list[int]:
        return self.r.durations(self.r.fds["xdp_vpc"], pkts, self.t.ifindex[("node", "vpca")])

    def variants(self, idx: list[int]) -> list[bytes]:
        from .cost import _variant
        return [_variant(self.base, i) for i in idx]

    def open_new(self, n: int) -> list[int]:
        """n new flows: their durations."""
        ds = self.fwd(self.variants(list(range(self.opened, self.opened + n))))
        self.opened += n
        return ds

    def replies(self, keys: list[dict]) -> list[bytes]:
        """The VPC's reply to each flow, built from its key (the same in both layouts): one
        frame from scapy, patched per flow (xdp_vpc checks no checksum on the way in)."""
        import ipaddress
        import struct

        from scapy.layers.inet import IP, UDP
        from scapy.layers.l2 import Ether
        from scapy.packet import Raw

        from . import topo as T
        tpl = bytearray(bytes(Ether(src=self.t.mac[("sink", "s0")],
                                    dst=self.t.mac[("node", "vpca")]) /
                              IP(src=T.SERVER, dst=T.ENI_IP) / UDP(sport=7, dport=1) /
                              Raw(b"y" * 18)))
        out = []
        for k in keys:
            b = bytearray(tpl)
            b[26:30] = ipaddress.IPv4Address(k["remote"]).packed
            struct.pack_into("!HH", b, 34, k["remote_port"], k["eni_port"])
            out.append(bytes(b))
        return out

    def flow_keys(self) -> list[dict]:
        from eniplane import paths
        from eniplane.maps import PinnedMap
        m = PinnedMap(str(paths.maps_dir(self.t.node_name) / "flows"))
        try:
            return [m.key_codec.decode(k) for k in m.keys_raw()]
        finally:
            m.close()

    def close(self) -> None:
        self.r.close()
        self.t.destroy()


def tmean(ds: list[int]) -> float:
    """The mean of the middle 80%: the kernel's durations come in steps of about 10 ns, so a
    median moves by whole steps, and a ratio of medians by 4% at 200 ns."""
    ds = sorted(ds)
    cut = len(ds) // 10
    mid = ds[cut:len(ds) - cut] or ds
    return sum(mid) / len(mid)


def _summary(per_round: dict[str, list[tuple[float, float, float]]]) -> dict:
    """Per round: (median duration, trimmed mean duration, run-time mean). The run-time mean
    (kernel.bpf_stats_enabled: run_time_ns / run_cnt over the batch) has no 10 ns steps; it
    includes the accounting's own cost, the same on both sides."""
    old, new = per_round["old"], per_round["new"]
    ratios = [n[1] / o[1] for o, n in zip(old, new) if o[1]]
    rt = [n[2] / o[2] for o, n in zip(old, new) if o[2]]
    return {"old_ns": statistics.median(o[0] for o in old),
            "new_ns": statistics.median(n[0] for n in new),
            "old_tmean_ns": statistics.median(o[1] for o in old),
            "new_tmean_ns": statistics.median(n[1] for n in new),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "old_run_time_ns": statistics.median(o[2] for o in old),
            "new_run_time_ns": statistics.median(n[2] for n in new),
            "run_time_ratio": statistics.median(rt), "run_time_ratio_min": min(rt),
            "run_time_ratio_max": max(rt)}


def compare(old: Path, new: Path = ROOT, rounds: int = 7, batch: int = 3000, rules: int = 60,
            max_flows: int = 262144, progress=print) -> dict:
    from eniplane import bpfsys

    sides = {}
    stats_fd = bpfsys.enable_run_time_stats()  # run_time_ns/run_cnt while this runs
    try:
        for name, checkout in (("old", old), ("new", new)):
            sides[name] = Side(name, checkout, rules, max_flows)
            progress(f"{name}: node up from {checkout}")
        for s in sides.values():
            s.fwd([s.hot])  # the one flow of the "1 flow" rows
        hot_reply = {n: s.replies([k for k in s.flow_keys()])[0] for n, s in sides.items()}
        metrics = ("est_fwd_1", "return_1", f"new_flow_{rules}_rules", "est_fwd_64k",
                   "return_64k")
        res: dict = {m: {"old": [], "new": []} for m in metrics}

        def interleave(metric: str, fn) -> None:
            for i in range(rounds):
                order = ("old", "new") if i % 2 == 0 else ("new", "old")
                for n in order:
                    t0, c0 = sides[n].run_time()
                    ds = fn(sides[n], i)
                    t1, c1 = sides[n].run_time()
                    res[metric][n].append((statistics.median(ds), tmean(ds),
                                           (t1 - t0) / max(1, c1 - c0)))
            s = _summary(res[metric])
            res[metric] = s
            progress(f"{metric}: median old {s['old_ns']:.0f} ns, new {s['new_ns']:.0f} ns; "
                     f"trimmed mean old {s['old_tmean_ns']:.1f} ns, new {s['new_tmean_ns']:.1f} "
                     f"ns, new/old {s['ratio']:.3f} ({s['ratio_min']:.3f}-{s['ratio_max']:.3f}); "
                     f"run time old {s['old_run_time_ns']:.1f} ns, new "
                     f"{s['new_run_time_ns']:.1f} ns, new/old {s['run_time_ratio']:.3f} "
                     f"({s['run_time_ratio_min']:.3f}-{s['run_time_ratio_max']:.3f})")

        interleave("est_fwd_1", lambda s, i: s.fwd([s.hot] * batch))
        interleave("return_1", lambda s, i: s.ret([hot_reply[s.name]] * batch))
        interleave(f"new_flow_{rules}_rules", lambda s, i: s.open_new(batch))
        for s in sides.values():  # fill both tables to 64k flows
            while s.opened < FILL - 1:
                s.open_new(min(20000, FILL - 1 - s.opened))
        keys = {n: s.flow_keys() for n, s in sides.items()}
        progress(f"filled: {', '.join(f'{n} {len(k)} flows' for n, k in keys.items())}")
        rng = random.Random(1)
        samples = [rng.sample(range(FILL - 1), batch) for _ in range(rounds)]
        interleave("est_fwd_64k", lambda s, i: s.fwd(s.variants(samples[i])))
        replies = {n: s.replies(keys[n]) for n, s in sides.items()}
        interleave("return_64k",
                   lambda s, i: s.ret([replies[s.name][j % len(replies[s.name])]
                                       for j in samples[i]]))
        res["flows_after_fill"] = {n: len(k) for n, k in keys.items()}
        res["rounds"], res["batch"], res["rules"] = rounds, batch, rules
        return res
    finally:
        for s in sides.values():
            s.close()
        os.close(stats_fd)


def _takeover(dp, side: "Side", progress) -> dict:
    """A full 256-port range towards one destination, all expired: each new flow walks its
    whole probe and takes the first expired entry over."""
    from . import topo as T
    from .cost import _fwd_packet
    lo, hi = 20000, 20255
    dp.set_eni(T.VNI, 1, 1, T.ENI_IP, port_lo=lo, port_hi=hi)
    dp.flush_flows()
    dp.set_timeouts(udp=1)
    sport = iter(range(1024, 65536))
    side.fwd([_fwd_packet(side.t, next(sport)) for _ in range(3000)])
    full = len(dp.flows())
    took, other, medians = 0, 0, []
    for _ in range(4):
        time.sleep(1.0 + 0.1 + 0.3)  # the timeout, the takeover grace, the coarse clock
        before = dp.stats()
        ds = side.fwd([_fwd_packet(side.t, next(sport)) for _ in range(hi - lo + 1)])
        after = dp.stats()
        # a batch, not packet by packet: reading counters between packets evicts the caches
        # and times something else; nearly all of a batch are takeovers (counted)
        took += after["flow_takeover"] - before["flow_takeover"]
        other += (hi - lo + 1) - (after["flow_takeover"] - before["flow_takeover"])
        medians.append(statistics.median(ds))
    dp.set_timeouts(udp=350)
    dp.set_eni(T.VNI, 1, 1, T.ENI_IP)
    dp.flush_flows()
    progress(f"takeover: {statistics.median(medians):.0f} ns ({took} takeovers, {other} "
             f"without a claimable entry; {full} entries in a {hi - lo + 1}-port range)")
    return {"takeover_ns": statistics.median(medians), "takeovers": took,
            "not_taken_over": other, "range_entries": full}


def _rst(side: "Side", n: int, progress) -> dict:
    """A TCP segment that is not a SYN, with no flow: answered with a RST (XDP_TX)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN

    from . import topo as T
    from eniplane import bpfsys, netlink
    t = side.t
    pkt = bytes(Ether(src=t.mac[("gen", "g0")], dst=t.mac[("node", "fab0")]) /
                IP(src=T.GEN_IP, dst=T.FABRIC_IP) / UDP(sport=49152, dport=4789, chksum=0) /
                VXLAN(vni=T.VNI, flags=0x08) / Ether(src=T.ENV_MAC, dst=T.GATEWAY_MAC) /
                IP(src=T.ENV_IP, dst=T.SERVER) / TCP(sport=33333, dport=5432, flags="A",
                                                     seq=1000, ack=2000) / (b"z" * 10))
    with netlink.in_netns(t.ns["node"]):
        rv = bpfsys.prog_test_run(side.r.fds["xdp_fabric"], pkt, out_size=len(pkt) + 128)[0]
    assert rv == 3, f"the RST answer is XDP_TX (3), got {rv}"
    ns = statistics.median(side.fwd([pkt] * n))
    progress(f"RST answer: {ns:.0f} ns")
    return {"rst_answer_ns": ns}


def _fill(side: "Side", n: int) -> None:
    while side.opened < n:
        side.open_new(min(20000, n - side.opened))


def _sweep(dp, side: "Side", n: int, progress) -> dict:
    """Datapath.sweep() over n flows all expired (removes n), and over n live ones (removes
    nothing: the scan alone)."""
    dp.flush_flows()
    side.opened = 0
    _fill(side, n)
    t = time.monotonic()
    scan = dp.sweep()
    scan_s = time.monotonic() - t
    dp.set_timeouts(udp=1)
    time.sleep(1.4)
    t = time.monotonic()
    gone = dp.sweep()
    remove_s = time.monotonic() - t
    dp.set_timeouts(udp=350)
    assert gone["removed"] == n and scan["removed"] == 0, (scan, gone)
    progress(f"sweep of {n} flows: {scan_s:.2f} s with nothing to remove, {remove_s:.2f} s "
             f"removing all: per million {scan_s * 1e6 / n:.1f} s / {remove_s * 1e6 / n:.1f} s")
    return {"sweep_flows": n, "sweep_scan_s": scan_s, "sweep_remove_s": remove_s,
            "sweep_scan_s_per_million": scan_s * 1e6 / n,
            "sweep_remove_s_per_million": remove_s * 1e6 / n}


def _under_sweep(side: "Side", n: int, rounds: int, batch: int, progress) -> dict:
    """The established path over n live flows, while a sweeper loops in another process (on
    another CPU when there is one), in rounds alternating with it stopped."""
    _fill(side, n)
    cpus = sorted(os.sched_getaffinity(0) | {0})
    other = [c for c in range(os.cpu_count() or 1) if c != 0]
    argv = [sys.executable, "-m", "bench.lifecycle", "sweeper", side.t.node_name]
    if other:
        argv = ["taskset", "-c", str(other[0]), *argv]
    p = subprocess.Popen(argv, env=_pythonpath(ROOT), cwd=ROOT, stdout=subprocess.PIPE,
                         text=True)
    rng = random.Random(2)
    res: dict = {"stopped": [], "running": []}
    try:
        assert p.stdout.readline().startswith("sweeping"), "the sweeper did not start"
        for i in range(rounds):
            for state in (("stopped", "running") if i % 2 == 0 else ("running", "stopped")):
                os.kill(p.pid, signal.SIGSTOP if state == "stopped" else signal.SIGCONT)
                time.sleep(0.2)
                pkts = side.variants(rng.sample(range(n), batch))
                res[state].append(statistics.median(side.fwd(pkts)))
    finally:
        os.kill(p.pid, signal.SIGCONT)
        p.terminate()
        p.wait()
    ratios = [r / s for s, r in zip(res["stopped"], res["running"])]
    out = {"flows": n, "cpus": cpus, "sweeper_cpu": other[0] if other else 0,
           "est_fwd_ns_sweeper_stopped": statistics.median(res["stopped"]),
           "est_fwd_ns_sweeper_running": statistics.median(res["running"]),
           "ratio": statistics.median(ratios), "ratio_min": min(ratios),
           "ratio_max": max(ratios)}
    progress(f"established over {n} flows: {out['est_fwd_ns_sweeper_stopped']:.0f} ns, "
             f"{out['est_fwd_ns_sweeper_running']:.0f} ns while a sweep runs "
             f"(ratio {out['ratio']:.3f})")
    return out


def costs(sweep_flows: int = 100_000, rounds: int = 7, batch: int = 3000, rules: int = 60,
          progress=print) -> dict:
    from eniplane.datapath import Datapath
    max_flows = max(262144, 1 << (2 * sweep_flows - 1).bit_length())
    side = Side("new", ROOT, rules, max_flows)
    try:
        with Datapath(side.t.node_name, side.t.ns["node"]) as dp:
            res = _takeover(dp, side, progress)
            res.update(_rst(side, batch, progress))
            dp.set_flow_limit(1 << 24)  # one ENI holds all the sweep's flows
            res.update(_sweep(dp, side, sweep_flows, progress))
            dp.flush_flows()
            side.opened = 0
            res["under_sweep"] = _under_sweep(side, sweep_flows, rounds, batch, progress)
        return res
    finally:
        side.close()


def sweeper(node: str) -> None:
    """Sweep the node's flows in a loop until killed (what an agent's sweeper does, without
    its pause)."""
    from eniplane.datapath import Datapath
    with Datapath(node) as dp:
        print("sweeping", flush=True)
        while True:
            dp.sweep()


def run(old: Path | None, sweep_flows: int, rounds: int, batch: int, progress=print) -> dict:
    try:
        os.sched_setaffinity(0, {0})
    except OSError:
        pass
    res: dict = {}
    if old is not None:
        res["compare"] = compare(old, rounds=rounds, batch=batch, progress=progress)
    res["costs"] = costs(sweep_flows, rounds=rounds, batch=batch, progress=progress)
    return res


def main(argv: list[str]) -> int:
    if argv[:1] == ["setup"]:
        node, ns, mac, rules, max_flows = argv[1:6]
        setup_node(node, ns, mac, int(rules), int(max_flows))
        return 0
    if argv[:1] == ["sweeper"]:
        sweeper(argv[1])
        return 0
    print(json.dumps(run(Path(argv[0]) if argv else None, 100_000, 7, 3000), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
