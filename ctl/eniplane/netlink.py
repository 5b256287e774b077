"""Netlink through pyroute2: links, addresses and XDP attachment inside a named network namespace.

Contract: every function takes the namespace name (None for the current one) and the interface
name, and raises NotFound / NetlinkError with both names in the message. No other module talks
netlink. XDP is attached in native (driver) mode where the driver has it; generic (skb) mode is
only a fallback, and the mode that took is returned so that `status` can report it.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from typing import Iterator

from .errors import AlreadyExists, NetlinkError, NotFound

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_ATTACHED_MODES = {1: "native", 2: "generic", 3: "offload", 4: "multi"}

NETNS_RUN_DIR = "/run/netns"


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_RUN_DIR, name))


def _where(ns: str | None) -> str:
    return f"namespace {ns}" if ns else "the host namespace"


@contextmanager
def ipr(ns: str | None = None) -> Iterator["object"]:
    """A netlink socket bound to `ns`. It is opened from inside the namespace by this very
    thread (setns there and back), not through pyroute2's forked helper, whose time-out under
    load could leave a socket in the wrong namespace."""
    from pyroute2 import IPRoute  # deferred: pyroute2 costs ~100 ms to import

    try:
        with in_netns(ns):
            sock = IPRoute()
    except OSError as e:
        raise NetlinkError(f"cannot open netlink in {_where(ns)}", e.errno) from None
    try:
        yield sock
    finally:
        sock.close()


def _nl_errno(e: Exception) -> int | None:
    return getattr(e, "code", None) or getattr(e, "errno", None)


def link_index(sock: object, ifname: str, ns: str | None = None) -> int:
    idx = sock.link_lookup(ifname=ifname)  # type: ignore[attr-defined]
    if not idx:
        raise NotFound(f"interface {ifname} not found in {_where(ns)}")
    return int(idx[0])


def link_get(ns: str | None, ifname: str) -> dict:
    """ifindex, MAC, MTU and attached XDP program of one interface."""
    with ipr(ns) as sock:
        idx = link_index(sock, ifname, ns)
        msg = sock.link("get", index=idx)[0]  # type: ignore[attr-defined]
        xdp = msg.get_attr("IFLA_XDP")
        prog_id, mode = 0, None
        if xdp is not None:
            attached = xdp.get_attr("IFLA_XDP_ATTACHED") or 0
            prog_id = xdp.get_attr("IFLA_XDP_PROG_ID") or 0
            mode = XDP_ATTACHED_MODES.get(attached)
        return {
            "ifname": ifname,
            "ifindex": idx,
            "mac": msg.get_attr("IFLA_ADDRESS"),
            "mtu": msg.get_attr("IFLA_MTU"),
            "up": bool(msg["flags"] & 1),
            "xdp_prog_id": prog_id,
            "xdp_mode": mode if prog_id else None,
        }


def xdp_attach(ns: str | None, ifname: str, prog_fd: int, mode: str = "auto",
               replace: bool = False) -> str:
    """Attach an XDP program; returns the mode that took ("native" or "generic")."""
    modes = {"auto": ["native", "generic"], "native": ["native"], "generic": ["generic"]}[mode]
    last: Exception | None = None
    with ipr(ns) as sock:
        idx = link_index(sock, ifname, ns)
        for m in modes:
            flags = XDP_FLAGS_DRV_MODE if m == "native" else XDP_FLAGS_SKB_MODE
            if not replace:
                flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
            try:
                sock.link("set", index=idx,  # type: ignore[attr-defined]
                          xdp={"attrs": [("IFLA_XDP_FD", prog_fd), ("IFLA_XDP_FLAGS", flags)]})
                return m
            except Exception as e:  # pyroute2 raises NetlinkError with .code
                code = _nl_errno(e)
                if code == errno.EBUSY or code == errno.EEXIST:
                    raise AlreadyExists(
                        f"interface {ifname} in {_where(ns)} already has an XDP program") from None
                last = e
    code = _nl_errno(last) if last else None
    raise NetlinkError(f"cannot attach XDP to {ifname} in {_where(ns)}", code)


def xdp_detach(ns: str | None, ifname: str) -> bool:
    """Remove whatever XDP program is attached, in any mode. False when there was none."""
    info = link_get(ns, ifname)
    if not info["xdp_prog_id"]:
        return False
    flags = XDP_FLAGS_SKB_MODE if info["xdp_mode"] == "generic" else XDP_FLAGS_DRV_MODE
    with ipr(ns) as sock:
        try:
            sock.link("set", index=info["ifindex"],  # type: ignore[attr-defined]
                      xdp={"attrs": [("IFLA_XDP_FD", -1), ("IFLA_XDP_FLAGS", flags)]})
        except Exception as e:
            raise NetlinkError(f"cannot detach XDP from {ifname} in {_where(ns)}", _nl_errno(e)) from None
    return True


@contextmanager
def in_netns(ns: str | None) -> Iterator[None]:
    """Run the body with this process inside `ns`: devmap updates resolve ifindexes in the
    caller's namespace, so tx_ports must be written from the node's namespace."""
    if not ns:
        yield
        return
    if not netns_exists(ns):
        raise NotFound(f"network namespace {ns} does not exist")
    from pyroute2 import netns as _netns

    _netns.pushns(ns)  # setns(2) in this thread; never creates the namespace
    try:
        yield
    finally:
        _netns.popns()


def netns_add(name: str) -> None:
    """Create a named namespace with iproute2, synchronously (the bind mount is in place when
    this returns; pyroute2's create() runs in a child process with a time-out)."""
    import subprocess

    p = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if p.returncode != 0:
        if netns_exists(name):
            raise AlreadyExists(f"network namespace {name} already exists")
        raise NetlinkError(f"cannot create network namespace {name}: {p.stderr.strip()}")


def netns_del(name: str) -> None:
    import subprocess

    if netns_exists(name):
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
