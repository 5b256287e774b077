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
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import bpfsys, netlink
from .errors import AlreadyExists, EniplaneError, NotFound, UsageError

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


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$")
ROLES = ("node", "fabric", "w1", "w2", "vpca", "vpcb")


def check_name(name: str) -> str:
    """A lab name prefixes namespace names and names its record file: keep it short and plain."""
    if not _NAME.match(name):
        raise UsageError(f"invalid lab name {name!r}: use 1-16 letters, digits, '_' or '-'")
    return name


def _netns_names() -> list[str]:
    d = netlink.NETNS_RUN_DIR
    return os.listdir(d) if os.path.isdir(d) else []


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
        lab = cls(check_name(prefix) if prefix else f"ep{secrets.token_hex(3)}")
        lab._claim()  # before anything is built: a name in use is refused, and left alone
        try:
            lab._build(servers)
        except BaseException:
            lab.destroy()
            raise
        lab.save()
        return lab

    def _claim(self) -> None:
        """Take the name by creating its record exclusively, so two `lab up --name X` cannot
        both build, and the clean-up of a failed one only ever removes what it made itself."""
        ours = {f"{self.prefix}-{role}" for role in ROLES}
        extra = (f"{self.prefix}-env-", f"{self.prefix}-host-")  # add_env, add_fabric_host
        taken = [n for n in _netns_names() if n in ours or n.startswith(extra)]
        LAB_DIR.mkdir(parents=True, exist_ok=True)
        try:
            with open(LAB_DIR / f"{self.prefix}.json", "x") as fh:
                fh.write(json.dumps(asdict(self), indent=2))
        except FileExistsError:
            raise AlreadyExists(f"lab {self.prefix} already exists "
                                f"(eniplane lab down {self.prefix} first)") from None
        if taken:  # namespaces of a lab whose record was lost: not ours to build over
            (LAB_DIR / f"{self.prefix}.json").unlink(missing_ok=True)
            raise AlreadyExists(f"lab {self.prefix} has no record but its namespaces exist "
                                f"({' '.join(sorted(taken))}): remove them with `ip netns del`")

    def _build(self, servers: bool) -> None:
        for role in ROLES:
            name = f"{self.prefix}-{role}"
            netlink.netns_add(name)  # recorded only once it is ours: destroy() removes by name
            self.namespaces[role] = name
        node, fab = self.namespaces["node"], self.namespaces["fabric"]
        for ns in self.namespaces.values():
            netlink.link_set(ns, "lo", up=True)

        netlink.bridge_add(fab, "br0", FABRIC_MTU)
        # node <-> fabric bridge
        netlink.veth_add(node, self.fabric_if, fab, "node", FABRIC_MTU)
        netlink.link_set(fab, "node", master="br0")
        netlink.addr_add(node, self.fabric_if, FABRIC_IP, 24)
        for w, ip in WORKER_IPS.items():
            netlink.veth_add(self.namespaces[w], "eth0", fab, w, FABRIC_MTU)
            netlink.link_set(fab, w, master="br0")
            netlink.addr_add(self.namespaces[w], "eth0", ip, 24)
        for v in ("a", "b"):
            vns = self.namespaces[f"vpc{v}"]
            netlink.veth_add(node, self.vpc_if(v), vns, "eth0", VPC_MTU)
            netlink.addr_add(vns, "eth0", VPC_GATEWAY, 16)
            netlink.addr_add(vns, "eth0", VPC_SERVER, 16)
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
        netlink.vxlan_add(wns, dev, vni, remote=FABRIC_IP, local=WORKER_IPS[worker], dev="eth0")
        netlink.link_set(wns, dev, to_netns=ns)
        netlink.link_set(ns, dev, rename="eth0", mtu=VPC_MTU, up=True)
        netlink.link_set(ns, "lo", up=True)
        netlink.addr_add(ns, "eth0", addr, 32)
        for r in routes:
            netlink.route_add(ns, r, "eth0", prefsrc=addr)
        self.exec(ns, ["ethtool", "-K", "eth0", "tx", "off"])  # full checksums, as on a wire
        self.envs[name] = {"ns": ns, "worker": worker, "vni": vni, "addr": addr}
        self.save()
        return ns

    def add_fabric_host(self, name: str) -> str:
        """A bare host on the fabric segment, beside the workers (a bridge port, no address):
        what a test needs to play another machine on the workers' network, e.g. one that
        claims a worker's address. Raw frames are its only way to speak."""
        if len(name) > 13:  # its bridge port is named h-NAME, and interface names stop at 15
            raise UsageError(f"fabric host name {name!r} is longer than 13 characters")
        ns = f"{self.prefix}-host-{name}"
        netlink.netns_add(ns)
        self.namespaces[f"host-{name}"] = ns
        self.save()
        fab = self.namespaces["fabric"]
        netlink.veth_add(ns, "eth0", fab, f"h-{name}", FABRIC_MTU)
        netlink.link_set(fab, f"h-{name}", master="br0")
        netlink.link_set(ns, "lo", up=True)
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

    def run(self, ns: str, argv: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess:
        """Like exec, for a command expected to fail: exit code and stderr tell how it failed."""
        return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                              timeout=timeout)


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
