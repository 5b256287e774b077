"""The benchmark topology: generator -> node -> sink, in namespaces of this run only.

Contract: three namespaces named after a per-run prefix. The generator's g0 faces the node's fab0
(the fabric, MTU 3000); the node's vpca faces the sink's s0 (the VPC, 10.0.0.10). Nothing leaves
them. `destroy()` removes them and the pins of any node brought up in them. Each scenario
configures the node's namespace for one way of doing the job:
  ceiling  - a minimal XDP program that rewrites MACs and redirects fab0 -> vpca (or back);
  state-floor - the ceiling plus one read-modify-write of a 16-byte flow entry per packet, at
             the slot the flow's hash names (no walk), in a table of eniplane's capacity: the
             floor for any design that keeps state per flow;
  eniplane - the real datapath, configured through the control plane's Datapath API;
  linux    - the kernel's VXLAN device, IP forwarding and nftables masquerade with conntrack.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess

from eniplane import loader, netlink, paths
from eniplane.loader import DEFAULT_MAX_FLOWS

FABRIC_IP, GEN_IP = "100.64.0.1", "100.64.0.11"
SERVER, ENI_IP, ENV_IP = "10.0.0.10", "10.0.1.4", "172.16.0.2"
ENV_MAC = "02:ee:00:00:00:02"
GATEWAY_MAC = "02:e1:1a:00:00:01"
VNI = 4242


def sh(ns: str, *argv: str, check: bool = True, input: str | None = None) -> str:
    p = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                       input=input, timeout=60)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(argv)} in {ns}: {p.stderr.strip()}")
    return p.stdout


class Topo:
    def __init__(self) -> None:
        self.prefix = f"epb{secrets.token_hex(3)}"
        self.ns = {r: f"{self.prefix}-{r}" for r in ("gen", "node", "sink")}
        self.node_name = f"{self.prefix}-node"
        self.created: list[str] = []  # destroy() removes only what this run made
        # LLVM may end the process while a node of this topology compiles: nothing would
        # unwind, and the namespaces would outlive the run
        self._forget_exit_hook = loader.on_compiler_exit(self.destroy)
        try:
            for n in self.ns.values():
                netlink.netns_add(n)
                self.created.append(n)
                with netlink.ipr(n) as ipr:
                    ipr.link("set", index=netlink.link_index(ipr, "lo"), state="up")
            self._veth(self.ns["gen"], "g0", self.ns["node"], "fab0", 3000)
            self._veth(self.ns["node"], "vpca", self.ns["sink"], "s0", 1500)
            self._addr(self.ns["gen"], "g0", GEN_IP, 24)
            self._addr(self.ns["node"], "fab0", FABRIC_IP, 24)
            self._addr(self.ns["sink"], "s0", SERVER, 16)
            self.mac = {(r, i): netlink.link_get(self.ns[r], i)["mac"]
                        for r, i in (("gen", "g0"), ("node", "fab0"), ("node", "vpca"),
                                     ("sink", "s0"))}
            self.ifindex = {(r, i): netlink.link_get(self.ns[r], i)["ifindex"]
                            for r, i in (("gen", "g0"), ("node", "fab0"), ("node", "vpca"),
                                         ("sink", "s0"))}
            # static neighbours: XDP sinks never answer ARP
            sh(self.ns["gen"], "ip", "neigh", "replace", FABRIC_IP, "lladdr",
               self.mac[("node", "fab0")], "dev", "g0")
            sh(self.ns["sink"], "ip", "neigh", "replace", ENI_IP, "lladdr",
               self.mac[("node", "vpca")], "dev", "s0")
        except BaseException:
            self.destroy()
            raise

    def _veth(self, a: str, ia: str, b: str, ib: str, mtu: int) -> None:
        with netlink.ipr(a) as ipr:
            ipr.link("add", ifname=ia, kind="veth", peer={"ifname": ib, "net_ns_fd": b})
            ipr.link("set", index=netlink.link_index(ipr, ia), mtu=mtu, state="up")
        with netlink.ipr(b) as ipr:
            ipr.link("set", index=netlink.link_index(ipr, ib), mtu=mtu, state="up")

    def _addr(self, ns: str, ifname: str, ip: str, plen: int) -> None:
        with netlink.ipr(ns) as ipr:
            ipr.addr("add", index=netlink.link_index(ipr, ifname), address=ip, prefixlen=plen)

    # ---- scenarios -------------------------------------------------------------------------
    def clear(self) -> None:
        """Back to a bare node namespace: no XDP on the node, no VXLAN device, no nftables."""
        from eniplane import node as nodemod

        if nodemod.is_up(self.node_name):
            nodemod.down(self.node_name)
        shutil.rmtree(paths.pin_dir(self.node_name), ignore_errors=True)
        for ifname in ("fab0", "vpca"):
            netlink.xdp_detach(self.ns["node"], ifname)
        sh(self.ns["node"], "ip", "link", "del", "vx0", check=False)
        sh(self.ns["node"], "nft", "flush", "ruleset", check=False)
        sh(self.ns["node"], "ip", "addr", "flush", "dev", "vpca", check=False)
        sh(self.ns["node"], "sysctl", "-qw", "net.ipv4.ip_forward=0")

    def ceiling(self, reverse: bool = False) -> int:
        """Load the redirect-only program; returns the number of flows it needs (none)."""
        self.clear()
        b, fd = self._load_ceiling(reverse)
        netlink.xdp_attach(self.ns["node"], "vpca" if reverse else "fab0", fd, "native")
        self._keep = b  # the attachment holds the program; the object holds the maps' fds
        return 0

    def _load_ceiling(self, reverse: bool, state_slots: int = 0, ports_off: int = 0,
                      defines: dict[str, int] | None = None) -> tuple[object, int]:
        """ceil_xdp set up for one direction: (the BPF object to keep, the program's fd). With
        `state_slots`, state_xdp instead: the flow is named by the four bytes of ports at
        `ports_off` in the frames it receives."""
        import ctypes

        from bcc import BPF

        from .gen import GEN_C

        cflags = ["-DFRAME_LEN=64", "-DGEN_MAX_FLOWS=1", "-Wno-unused-function"]
        if state_slots:
            cflags += [f"-DSTATE_SLOTS={state_slots}", f"-DSTATE_OFF={ports_off}"]
        cflags += [f"-D{k}={v}" for k, v in (defines or {}).items()]
        b = BPF(src_file=str(GEN_C).encode(), cflags=cflags)
        fn = b.load_func(b"state_xdp" if state_slots else b"ceil_xdp", BPF.XDP)
        dst = ("node", "fab0") if reverse else ("node", "vpca")
        peer = ("gen", "g0") if reverse else ("sink", "s0")
        macs = bytes.fromhex(self.mac[peer].replace(":", "")) + \
            bytes.fromhex(self.mac[dst].replace(":", ""))
        leaf = b["ceil_macs"].Leaf()
        ctypes.memmove(ctypes.addressof(leaf), macs, 12)
        b["ceil_macs"][ctypes.c_int(0)] = leaf
        with netlink.in_netns(self.ns["node"]):
            b["ceil_tx"][ctypes.c_int(0)] = ctypes.c_int(self.ifindex[dst])
        return b, fn.fd

    def stage(self, fwd_ports_off: int, ret_ports_off: int,
              max_flows: int = DEFAULT_MAX_FLOWS) -> "object":
        """All scenarios configured at once: eniplane up (its programs attached), the Linux
        stack's device, forwarding and nftables in place, the ceiling and state-floor programs
        loaded (the latter find a flow's ports at the given offsets of forward and return
        frames; both tables have `max_flows` entries). use() then switches between them by
        re-attaching XDP programs only, so a run can interleave the scenarios' repeats and the
        host's drift hits them alike."""
        from eniplane import bpfsys

        dp = self.eniplane(max_flows)
        self._linux_config()
        self._staged = {}
        for reverse in (False, True):
            self._staged[("ceiling", reverse)] = self._load_ceiling(reverse)
            self._staged[("state-floor", reverse)] = self._load_ceiling(
                reverse, max_flows, ret_ports_off if reverse else fwd_ports_off)
        progs = paths.progs_dir(self.node_name)
        self._fds = {"xdp_fabric": bpfsys.obj_get(str(progs / "xdp_fabric")),
                     "xdp_vpc": bpfsys.obj_get(str(progs / "xdp_vpc")),
                     "pass": bpfsys.load_xdp_pass()}
        self._owned_fds = set(self._fds)  # the staged programs' fds belong to their objects
        for (scenario, reverse), (_, fd) in self._staged.items():
            self._fds[f"{scenario}-{'ret' if reverse else 'fwd'}"] = fd
        return dp

    def state_counts(self, direction: str) -> dict[str, int]:
        """What the state-floor program of a direction did so far: packets that found their
        flow's entry, and entries written."""
        b = self._staged[("state-floor", direction == "return")][0]
        out = {"found": 0, "made": 0}
        for per_cpu in b["state_counts"].values():
            for v in per_cpu:
                out["found"] += v.found
                out["made"] += v.made
        return out

    def node_prog_fd(self, scenario: str, direction: str) -> int:
        """The staged program that does a scenario's work on the node in one direction (the
        one on fab0 forward, on vpca in return)."""
        fab, vpc = self._programs(scenario, direction)
        return self._fds[fab if direction == "forward" else vpc]

    def use(self, scenario: str, direction: str) -> None:
        """Attach the programs of one staged scenario (see stage()) to fab0 and vpca. Every
        receiving veth keeps an XDP program, which it needs to take redirected frames."""
        fab, vpc = self._programs(scenario, direction)
        netlink.xdp_attach(self.ns["node"], "fab0", self._fds[fab], "native", replace=True)
        netlink.xdp_attach(self.ns["node"], "vpca", self._fds[vpc], "native", replace=True)

    @staticmethod
    def _programs(scenario: str, direction: str) -> tuple[str, str]:
        return {("ceiling", "forward"): ("ceiling-fwd", "pass"),
                ("ceiling", "return"): ("pass", "ceiling-ret"),
                ("state-floor", "forward"): ("state-floor-fwd", "pass"),
                ("state-floor", "return"): ("pass", "state-floor-ret"),
                ("eniplane", "forward"): ("xdp_fabric", "xdp_vpc"),
                ("eniplane", "return"): ("xdp_fabric", "xdp_vpc"),
                ("linux", "forward"): ("pass", "pass"),
                ("linux", "return"): ("pass", "pass")}[(scenario, direction)]

    def eniplane(self, max_flows: int = DEFAULT_MAX_FLOWS) -> "object":
        """Bring the real node up (flow tables of `max_flows` per direction, the default of
        `eniplane up`) and configure one worker, one VPC and one ENI."""
        from eniplane import node as nodemod
        from eniplane.datapath import Datapath
        from eniplane.sgcompile import Rule

        self.clear()
        nodemod.up(self.node_name, "fab0", FABRIC_IP, self.ns["node"],
                   defines={"MAX_FLOWS": max_flows})
        info = nodemod.attach_vpc_if(self.node_name, "vpca")
        dp = Datapath(self.node_name, self.ns["node"])
        dp.set_vpc(info["ifindex"], 1, SERVER, info["mac"], info["slot"],
                   gateway_mac=self.mac[("sink", "s0")])
        dp.add_worker(GEN_IP)
        dp.set_eni(VNI, 1, 1, ENI_IP)
        dp.sync_placements({(GEN_IP, VNI): 1})
        dp.set_sg_rules(VNI, [Rule.of("all", "10.0.0.0/16")])
        return dp

    def linux(self) -> None:
        """The job done by the Linux stack: VXLAN device, forwarding, nftables masquerade."""
        self.clear()
        self._linux_config()
        # the veth receiving XDP-generated frames needs NAPI: a pass program on each receiver
        self._pass("node", "fab0")
        self._pass("node", "vpca")

    def _linux_config(self) -> None:
        n = self.ns["node"]
        sh(n, "ip", "link", "add", "vx0", "type", "vxlan", "id", str(VNI), "local", FABRIC_IP,
           "dstport", "4789", "dev", "fab0", "nolearning")
        sh(n, "ip", "link", "set", "vx0", "address", GATEWAY_MAC, "mtu", "1500", "up")
        sh(n, "ip", "addr", "add", "172.16.0.1/24", "dev", "vx0")
        sh(n, "ip", "addr", "add", f"{ENI_IP}/16", "dev", "vpca")
        sh(n, "ip", "neigh", "replace", SERVER, "lladdr", self.mac[("sink", "s0")], "dev", "vpca")
        sh(n, "ip", "neigh", "replace", ENV_IP, "lladdr", ENV_MAC, "dev", "vx0")
        sh(n, "bridge", "fdb", "append", ENV_MAC, "dev", "vx0", "dst", GEN_IP)
        sh(n, "ip", "neigh", "replace", GEN_IP, "lladdr", self.mac[("gen", "g0")], "dev", "fab0")
        sh(n, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh(n, "nft", "-f", "-", input=(
            "table ip eniplane_bench {\n"
            " chain post { type nat hook postrouting priority 100; oifname \"vpca\" masquerade; }\n"
            "}\n"))

    def tunnel_device(self, kind: str) -> str:
        """A VXLAN or GENEVE device in the generator's namespace, towards the node: pktgen feeds
        it inner frames and the kernel encapsulates them (the Vagrant VM has both devices)."""
        name = "vxg" if kind == "vxlan" else "gng"
        if not netlink.netns_exists(self.ns["gen"]):
            raise RuntimeError("no generator namespace")
        if kind == "vxlan":
            sh(self.ns["gen"], "ip", "link", "add", name, "type", "vxlan", "id", str(VNI),
               "remote", FABRIC_IP, "local", GEN_IP, "dstport", "4789", "dev", "g0", check=False)
        else:
            sh(self.ns["gen"], "ip", "link", "add", name, "type", "geneve", "id", str(VNI),
               "remote", FABRIC_IP)
        sh(self.ns["gen"], "ip", "link", "set", name, "address", ENV_MAC, "up")
        return name

    def has_geneve(self) -> bool:
        p = subprocess.run(["ip", "netns", "exec", self.ns["gen"], "ip", "link", "add", "gnprobe",
                            "type", "geneve", "id", "1", "remote", FABRIC_IP],
                           capture_output=True)
        if p.returncode == 0:
            sh(self.ns["gen"], "ip", "link", "del", "gnprobe")
        return p.returncode == 0

    def _pass(self, role: str, ifname: str) -> None:
        from eniplane import bpfsys
        import os

        fd = bpfsys.load_xdp_pass()
        try:
            netlink.xdp_attach(self.ns[role], ifname, fd, "native", replace=True)
        finally:
            os.close(fd)

    def destroy(self) -> None:
        import os

        for name, fd in getattr(self, "_fds", {}).items():
            if name in getattr(self, "_owned_fds", ()):
                os.close(fd)
        self._fds = {}
        for b, _ in getattr(self, "_staged", {}).values():
            b.cleanup()
        self._staged = {}
        try:
            self.clear()
        except Exception:
            pass
        for n in self.created:
            netlink.netns_del(n)
        self.created = []
        self._forget_exit_hook()

    def __enter__(self) -> "Topo":
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
