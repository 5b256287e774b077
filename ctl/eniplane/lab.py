"""The lab: a node, a fabric, two worker hosts and two customer VPCs, all in network namespaces.

Contract: every namespace name starts with a per-run prefix (`ep` + 6 hex digits), so runs can
follow or overlap each other; nothing is created in, attached to or sent from the host's own
namespace. `Lab.create()` builds it, `destroy()` removes every namespace and process it made, by
name and pid, and also runs when creation fails half-way. Both VPCs use 10.0.0.0/16 on purpose.

    w1 (100.64.0.11) --+                          +-- vpca: VPC A, gateway 10.0.0.1, server 10.0.0.10
                       +-- fabric bridge -- node -+
    w2 (100.64.0.12) --+   (100.64.0.0/24)  fab0  +-- vpcb: VPC B, gateway 10.0.0.1, server 10.0.0.10
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import bpfsys, netlink
from .errors import EniplaneError, NotFound

LAB_DIR = Path("/run/eniplane/labs")
FABRIC_NET = "100.64.0.0/24"
FABRIC_IP = "100.64.0.1"
WORKER_IPS = {"w1": "100.64.0.11", "w2": "100.64.0.12"}
VPC_CIDR = "10.0.0.0/16"
VPC_GATEWAY = "10.0.0.1"
VPC_SERVER = "10.0.0.10"
FABRIC_MTU = 3000  # jumbo enough for a 1500-byte VPC packet plus tunnel overhead
VPC_MTU = 1500
HTTP_PORT = 80
UDP_ECHO_PORT = 7


@dataclass
class Lab:
    prefix: str
    namespaces: dict[str, str] = field(default_factory=dict)  # role -> namespace name
    pids: list[int] = field(default_factory=list)
    envs: dict[str, dict] = field(default_factory=dict)

    # ---- names -----------------------------------------------------------------------------
    @property
    def node_ns(self) -> str:
        return self.namespaces["node"]

    fabric_if = "fab0"
    fabric_ip = FABRIC_IP

    def vpc_ns(self, vpc: str) -> str:
        return self.namespaces[f"vpc{vpc}"]

    @staticmethod
    def vpc_if(vpc: str) -> str:
        return f"vpc{vpc}"

    def worker_ns(self, worker: str) -> str:
        return self.namespaces[worker]

    # ---- life cycle ------------------------------------------------------------------------
    @classmethod
    def create(cls, prefix: str | None = None, servers: bool = True) -> "Lab":
        lab = cls(prefix or f"ep{secrets.token_hex(3)}")
        try:
            lab._build(servers)
        except BaseException:
            lab.destroy()
            raise
        lab.save()
        return lab

    def _build(self, servers: bool) -> None:
        for role in ("node", "fabric", "w1", "w2", "vpca", "vpcb"):
            name = f"{self.prefix}-{role}"
            netlink.netns_add(name)  # recorded only once it is ours: destroy() removes by name
            self.namespaces[role] = name
        node, fab = self.namespaces["node"], self.namespaces["fabric"]
        for role in self.namespaces.values():
            self._up(role, "lo")

        with netlink.ipr(fab) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            ipr.link("set", index=netlink.link_index(ipr, "br0"), mtu=FABRIC_MTU, state="up")
        # node <-> fabric bridge
        self._veth(node, self.fabric_if, fab, "node", FABRIC_MTU)
        self._bridge_port(fab, "node")
        self._addr(node, self.fabric_if, FABRIC_IP, 24)
        for w, ip in WORKER_IPS.items():
            self._veth(self.namespaces[w], "eth0", fab, w, FABRIC_MTU)
            self._bridge_port(fab, w)
            self._addr(self.namespaces[w], "eth0", ip, 24)
        for v in ("a", "b"):
            vns = self.namespaces[f"vpc{v}"]
            self._veth(node, self.vpc_if(v), vns, "eth0", VPC_MTU)
            self._addr(vns, "eth0", VPC_GATEWAY, 16)
            self._addr(vns, "eth0", VPC_SERVER, 16)
        # A veth receives XDP_TX'd and redirected frames only while its peer runs NAPI, which an
        # XDP program turns on: give every receiving peer a pass-everything program.
        fd = bpfsys.load_xdp_pass()
        try:
            for ns, ifname in [(fab, "node"), (self.namespaces["vpca"], "eth0"),
                               (self.namespaces["vpcb"], "eth0")]:
                netlink.xdp_attach(ns, ifname, fd, "native")
        finally:
            os.close(fd)
        # veth hands checksum-offloaded skbs across namespaces with the L4 checksum still partial;
        # a wire never carries those, so hosts in the lab checksum in software like a real NIC.
        for v in ("a", "b"):
            self.exec(self.namespaces[f"vpc{v}"], ["ethtool", "-K", "eth0", "tx", "off"])
        if servers:
            for v in ("a", "b"):
                self.start(self.namespaces[f"vpc{v}"],
                           [sys.executable, "-m", "eniplane.labserve", "serve", "--bind", VPC_SERVER,
                            "--name", f"vpc-{v}", "--http-port", str(HTTP_PORT),
                            "--udp-port", str(UDP_ECHO_PORT)])
            for v in ("a", "b"):
                self._wait_listening(self.namespaces[f"vpc{v}"], HTTP_PORT)

    def _up(self, ns: str, ifname: str) -> None:
        with netlink.ipr(ns) as ipr:
            ipr.link("set", index=netlink.link_index(ipr, ifname, ns), state="up")

    def _veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str, mtu: int) -> None:
        with netlink.ipr(ns_a) as ipr:
            ipr.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b, "net_ns_fd": ns_b})
            ipr.link("set", index=netlink.link_index(ipr, if_a, ns_a), mtu=mtu, state="up")
        with netlink.ipr(ns_b) as ipr:
            ipr.link("set", index=netlink.link_index(ipr, if_b, ns_b), mtu=mtu, state="up")

    def _bridge_port(self, ns: str, ifname: str) -> None:
        with netlink.ipr(ns) as ipr:
            br = netlink.link_index(ipr, "br0", ns)
            ipr.link("set", index=netlink.link_index(ipr, ifname, ns), master=br)

    def _addr(self, ns: str, ifname: str, ip: str, plen: int) -> None:
        with netlink.ipr(ns) as ipr:
            ipr.addr("add", index=netlink.link_index(ipr, ifname, ns), address=ip, prefixlen=plen)

    def start(self, ns: str, argv: list[str]) -> int:
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        self.pids.append(p.pid)
        return p.pid

    def _wait_listening(self, ns: str, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = _run(["ip", "netns", "exec", ns, "cat", "/proc/net/tcp"], check=False)
            if f":{port:04X} 00000000:0000 0A" in out:
                return
            time.sleep(0.05)
        raise EniplaneError(f"lab server in {ns} did not start listening on port {port}")

    # ---- environments ----------------------------------------------------------------------
    def add_env(self, name: str, worker: str, vni: int, addr: str, tunnel: str = "vxlan",
                routes: tuple[str, ...] = (VPC_CIDR,)) -> str:
        """An execution environment: its own namespace on `worker`, reaching the node through a
        Linux VXLAN device whose socket stays in the worker's namespace (a real kernel peer)."""
        if tunnel != "vxlan":
            raise EniplaneError("the lab's kernel peers speak VXLAN only (no GENEVE device here)")
        ns = f"{self.prefix}-env-{name}"
        netlink.netns_add(ns)
        self.namespaces[f"env-{name}"] = ns
        wns = self.namespaces[worker]
        dev = f"vx{len(self.envs)}"
        with netlink.ipr(wns) as ipr:
            eth0 = netlink.link_index(ipr, "eth0", wns)
            ipr.link("add", ifname=dev, kind="vxlan", vxlan_id=vni, vxlan_group=FABRIC_IP,
                     vxlan_port=4789, vxlan_link=eth0, vxlan_local=WORKER_IPS[worker])
            ipr.link("set", index=netlink.link_index(ipr, dev, wns), net_ns_fd=ns)
        with netlink.ipr(ns) as ipr:
            idx = netlink.link_index(ipr, dev, ns)
            ipr.link("set", index=idx, ifname="eth0", mtu=VPC_MTU, state="up")
            ipr.link("set", index=netlink.link_index(ipr, "lo", ns), state="up")
            ipr.addr("add", index=idx, address=addr, prefixlen=32)
            for r in routes:
                ipr.route("add", dst=r, oif=idx, prefsrc=addr)
        self.exec(ns, ["ethtool", "-K", "eth0", "tx", "off"])  # full checksums, as on a wire
        self.envs[name] = {"ns": ns, "worker": worker, "vni": vni, "addr": addr}
        self.save()
        return ns

    # ---- records ---------------------------------------------------------------------------
    def save(self) -> None:
        LAB_DIR.mkdir(parents=True, exist_ok=True)
        (LAB_DIR / f"{self.prefix}.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, prefix: str) -> "Lab":
        p = LAB_DIR / f"{prefix}.json"
        if not p.exists():
            raise NotFound(f"no lab named {prefix}")
        return cls(**json.loads(p.read_text()))

    @classmethod
    def all(cls) -> list[str]:
        return sorted(p.stem for p in LAB_DIR.glob("*.json")) if LAB_DIR.exists() else []

    def destroy(self) -> None:
        for pid in self.pids:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            _reap(pid)
        for ns in list(self.namespaces.values())[::-1]:
            netlink.netns_del(ns)
        (LAB_DIR / f"{self.prefix}.json").unlink(missing_ok=True)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def exec(self, ns: str, argv: list[str], timeout: float = 10.0, check: bool = True) -> str:
        return _run(["ip", "netns", "exec", ns, *argv], timeout=timeout, check=check)


def _reap(pid: int, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            return
        time.sleep(0.02)
    try:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _run(argv: list[str], timeout: float = 10.0, check: bool = True) -> str:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise EniplaneError(f"{' '.join(argv)} failed: {(p.stderr or p.stdout).strip()}")
    return p.stdout
