"""Packet generators with one interface, and the counting sink.

Contract: `Generator.run(seconds)` sends pre-built frames for N flows from one namespace's
interface and returns (packets offered, seconds); the sink counts what arrives. Two backends:
  - "xdp": BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (works on kernels without pktgen,
    such as the development VM); each call is sized to about 2 s of packets, because every call
    pauses 15-30 ms before returning.
  - "pktgen": the kernel module through /proc/net/pktgen (the Vagrant VM); it sends the same
    template with the flows' source ports as a range (pktgen's own randomisation, RFC 4814).
Both are bounded in count and time and only ever use interfaces of the benchmark's namespaces.
"""

from __future__ import annotations

import ctypes
import os
import random
import time
from pathlib import Path

from eniplane import bpfsys, netlink

GEN_C = Path(__file__).resolve().parent / "gen.c"


def rfc4814_ports(n: int, seed: int = 4814) -> list[tuple[int, int]]:
    """n distinct (source, destination) port pairs, pseudorandom as RFC 4814 asks."""
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    out = []
    while len(out) < n:
        p = (rng.randint(1024, 65535), rng.randint(1024, 65535))
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def vxlan_sport(sport: int, dport: int) -> int:
    """The outer UDP source port an RFC 7348 sender picks for a flow: a hash of the inner headers
    (here its ports) in the dynamic range 49152-65535, so that the fabric's ECMP and the
    receiver's RSS spread flows."""
    h = ((sport << 16 | dport) * 0x9E3779B1) & 0xFFFFFFFF
    return 49152 + ((h >> 16) & 0x3FFF)


class Sink:
    """sink_xdp on one interface: counts and drops every frame."""

    def __init__(self, ns: str, ifname: str):
        from bcc import BPF

        self.bpf = BPF(src_file=str(GEN_C).encode(),
                       cflags=["-DFRAME_LEN=64", "-DGEN_MAX_FLOWS=1", "-Wno-unused-function"])
        fn = self.bpf.load_func(b"sink_xdp", BPF.XDP)
        self.ns, self.ifname = ns, ifname
        netlink.xdp_attach(ns, ifname, fn.fd, "native", replace=True)

    def count(self) -> int:
        return sum(self.bpf["sink_count"][ctypes.c_int(0)])

    def close(self) -> None:
        try:
            netlink.xdp_detach(self.ns, self.ifname)
        except Exception:
            pass
        self.bpf.cleanup()


class XdpGenerator:
    backend = "xdp"

    def __init__(self, ns: str, ifname: str, template: bytes, ports: list[tuple[int, int]],
                 sport_off: int, dport_off: int, outer_off: int = 0):
        from bcc import BPF

        self.ns, self.ifname, self.template = ns, ifname, template
        n = max(1, len(ports))
        self.bpf = BPF(src_file=str(GEN_C).encode(),
                       cflags=[f"-DFRAME_LEN={len(template)}", f"-DGEN_MAX_FLOWS={n}",
                               "-Wno-unused-function"])
        self.fd = self.bpf.load_func(b"gen_xdp", BPF.XDP).fd
        t = self.bpf[b"tmpl"]
        leaf = t.Leaf()
        leaf.nflows, leaf.sport_off, leaf.dport_off = len(ports), sport_off, dport_off
        leaf.outer_off = outer_off
        ctypes.memmove(ctypes.addressof(leaf.data), template, len(template))
        t[ctypes.c_int(0)] = leaf
        fp = self.bpf[b"flow_ports"]
        for i, (sp, dp) in enumerate(ports):
            v = fp.Leaf()
            v.sport, v.dport = int.from_bytes(sp.to_bytes(2, "big"), "little"), \
                int.from_bytes(dp.to_bytes(2, "big"), "little")
            v.outer = int.from_bytes(vxlan_sport(sp, dp).to_bytes(2, "big"), "little")
            fp[ctypes.c_int(i)] = v
        self.ifindex = netlink.link_get(ns, ifname)["ifindex"]
        self.rate = 0.0  # packets per second, learned by calibration

    def _send(self, count: int) -> float:
        t = time.monotonic()
        with netlink.in_netns(self.ns):
            bpfsys.prog_test_run(self.fd, self.template, repeat=count, out_size=0,
                                 flags=bpfsys.BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=64,
                                 ingress_ifindex=self.ifindex)
        return time.monotonic() - t

    def run(self, seconds: float, max_packets: int = 50_000_000) -> tuple[int, float]:
        """Send for about `seconds` (never more than max_packets); returns (sent, elapsed)."""
        if not self.rate:
            probe = min(200_000, max_packets)
            self.rate = probe / max(self._send(probe), 1e-6)
        count = int(min(max_packets, max(1000, self.rate * seconds)))
        elapsed = self._send(count)
        self.rate = count / max(elapsed, 1e-6)
        return count, elapsed

    def close(self) -> None:
        self.bpf.cleanup()


class PktgenGenerator:
    """The kernel's pktgen, for kernels that have it (the Vagrant VM). It takes the frame's
    fields as parameters; flows vary in the inner source port through pktgen's UDP source port
    range on an outer-only template, so it drives the plain-IPv4 return path and the Linux
    baseline; the tunnel's forward path needs the XDP generator's templates."""

    backend = "pktgen"
    PROC = Path("/proc/net/pktgen")

    def __init__(self, ns: str, ifname: str, dst_ip: str, dst_mac: str,
                 ports: list[tuple[int, int]], size: int = 64, src_ip: str | None = None):
        if not self.PROC.exists():
            raise RuntimeError("pktgen is not available (no /proc/net/pktgen; modprobe pktgen)")
        self.ns, self.ifname = ns, ifname
        lo = min(p[0] for p in ports)
        hi = max(p[0] for p in ports)
        self.cmds = [f"pkt_size {size}", f"dst {dst_ip}", f"dst_mac {dst_mac}",
                     f"udp_src_min {lo}", f"udp_src_max {hi}", f"udp_dst_min {ports[0][1]}",
                     f"udp_dst_max {ports[0][1]}", "flag UDPSRC_RND", f"flows {len(ports)}",
                     "flowlen 1", "count 0", "burst 32"]
        if src_ip:
            self.cmds[:0] = [f"src_min {src_ip}", f"src_max {src_ip}"]

    def _pg(self, path: str, cmd: str) -> None:
        from eniplane.lab import _run
        _run(["ip", "netns", "exec", self.ns, "sh", "-c", f"echo '{cmd}' > {path}"])

    def run(self, seconds: float, max_packets: int = 50_000_000) -> tuple[int, float]:
        thread = self.PROC / "kpktgend_0"
        self._pg(str(thread), "rem_device_all")
        self._pg(str(thread), f"add_device {self.ifname}")
        dev = self.PROC / self.ifname
        for c in self.cmds[:-2] + [f"count {max_packets}"]:
            self._pg(str(dev), c)
        import subprocess
        t = time.monotonic()
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, "sh", "-c",
                              f"echo start > {self.PROC / 'pgctrl'}"])
        try:
            p.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self._pg(str(self.PROC / "pgctrl"), "stop")
            p.wait()
        elapsed = time.monotonic() - t
        sent = 0
        for line in dev.read_text().splitlines():
            if "pkts-sofar:" in line:
                sent = int(line.split("pkts-sofar:")[1].split()[0])
        return sent, elapsed

    def close(self) -> None:
        try:
            self._pg(str(self.PROC / "kpktgend_0"), "rem_device_all")
        except Exception:
            pass


def have_pktgen() -> bool:
    return PktgenGenerator.PROC.exists()


def pin_cpu0() -> None:
    """The 'single' set-up of the shared notes: generator, node and sink on one core."""
    try:
        os.sched_setaffinity(0, {0})
    except OSError:
        pass
