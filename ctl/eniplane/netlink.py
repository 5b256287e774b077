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
XDP_FLAGS_REPLACE = 1 << 4  # Linux 5.7: swap only if IFLA_XDP_EXPECTED_FD is attached
XDP_ATTACHED_MODES = {1: "native", 2: "generic", 3: "offload", 4: "multi"}
# what pyroute2 (0.7+) decodes IFLA_XDP_ATTACHED into, as iproute2 names the modes
_XDP_ATTACHED_NAMES = {"xdp": 1, "xdpgeneric": 2, "xdpoffload": 3, "xdpmulti": 4}


def xdp_mode_name(attached: object) -> str | None:
    """IFLA_XDP_ATTACHED as "native", "generic", ...: pyroute2 hands it over as a number or by
    iproute2's name ("xdp", "xdpgeneric") depending on its version."""
    if isinstance(attached, str):
        attached = _XDP_ATTACHED_NAMES.get(attached)
    return XDP_ATTACHED_MODES.get(attached) if isinstance(attached, int) else None

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
            mode = xdp_mode_name(attached)
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


def xdp_replace(ns: str | None, ifname: str, prog_fd: int, expected_fd: int, mode: str) -> None:
    """Swap the XDP program of `ifname` for prog_fd in one netlink request: the kernel replaces
    the program only while expected_fd's program is the one attached in `mode` ("native" or
    "generic"), so every packet meets either the old program or the new one, never none, and
    a program attached by someone else meanwhile is never replaced."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    if not any(nla[0] == "IFLA_XDP_EXPECTED_FD" for nla in ifinfmsg.xdp.nla_map):
        raise NetlinkError("this pyroute2 has no IFLA_XDP_EXPECTED_FD: an atomic XDP swap "
                           "needs a newer pyroute2")
    flags = XDP_FLAGS_REPLACE | (XDP_FLAGS_SKB_MODE if mode == "generic" else XDP_FLAGS_DRV_MODE)
    with ipr(ns) as sock:
        idx = link_index(sock, ifname, ns)
        try:
            sock.link("set", index=idx,  # type: ignore[attr-defined]
                      xdp={"attrs": [("IFLA_XDP_FD", prog_fd),
                                     ("IFLA_XDP_EXPECTED_FD", expected_fd),
                                     ("IFLA_XDP_FLAGS", flags)]})
        except Exception as e:
            code = _nl_errno(e)
            if code == errno.EEXIST:
                raise NetlinkError(f"the XDP program on {ifname} in {_where(ns)} is not the one "
                                   f"expected (changed meanwhile?)", code) from None
            raise NetlinkError(f"cannot replace the XDP program on {ifname} in {_where(ns)}",
                               code) from None


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


def xdp_find(prog_ids: set[int]) -> list[tuple[str | None, str]]:
    """(namespace, interface) of every interface carrying one of these XDP programs, searched in
    the host namespace and every named one (/run/netns). Namespaces without a name cannot be
    reached from here; a namespace that disappears during the search is skipped."""
    found: list[tuple[str | None, str]] = []
    if not prog_ids:
        return found
    names = sorted(os.listdir(NETNS_RUN_DIR)) if os.path.isdir(NETNS_RUN_DIR) else []
    for ns in [None, *names]:
        try:
            with ipr(ns) as sock:
                links = list(sock.get_links())  # type: ignore[attr-defined]
        except (NotFound, NetlinkError):
            continue
        for msg in links:
            xdp = msg.get_attr("IFLA_XDP")
            if xdp is None:
                continue
            ids = {xdp.get_attr(a) or 0 for a in
                   ("IFLA_XDP_PROG_ID", "IFLA_XDP_DRV_PROG_ID", "IFLA_XDP_SKB_PROG_ID")}
            if ids & prog_ids:
                found.append((ns, msg.get_attr("IFLA_IFNAME")))
    return found


def veth_peer(ns: str | None, ifname: str) -> dict | None:
    """The other end of a veth: {"netns", "ifname", "xdp_prog_id"}, looked for in `ns`, the
    host namespace (that of PID 1) and every named one; None if `ifname` is no veth;
    "ifname" None when the peer is in a namespace without a name (unreachable from here)."""
    with ipr(ns) as sock:
        idx = link_index(sock, ifname, ns)
        msg = sock.link("get", index=idx)[0]  # type: ignore[attr-defined]
        info = msg.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "veth":
            return None
        peer_idx, nsid = msg.get_attr("IFLA_LINK"), msg.get_attr("IFLA_LINK_NETNSID")
        where: str | None | bool = ns if nsid is None else False
        if nsid is not None:
            # ifindexes repeat across namespaces: the peer's namespace is the one whose id, as
            # `ns` numbers namespaces, is the link's IFLA_LINK_NETNSID
            names = sorted(os.listdir(NETNS_RUN_DIR)) if os.path.isdir(NETNS_RUN_DIR) else []
            for cand, path in [(None, "/proc/1/ns/net"),
                               *[(n, os.path.join(NETNS_RUN_DIR, n)) for n in names]]:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    continue
                try:
                    got = sock.get_netnsid(fd=fd)  # type: ignore[attr-defined]
                except Exception:  # a namespace that went away meanwhile
                    got = None
                finally:
                    os.close(fd)
                if got and got.get("nsid") == nsid:
                    where = cand
                    break
    if where is False:
        return {"netns": None, "ifname": None, "xdp_prog_id": None}
    with ipr(where or None) as sock:
        p = sock.link("get", index=peer_idx)[0]  # type: ignore[attr-defined]
    xdp = p.get_attr("IFLA_XDP")
    return {"netns": where, "ifname": p.get_attr("IFLA_IFNAME"),
            "xdp_prog_id": (xdp.get_attr("IFLA_XDP_PROG_ID") or 0) if xdp is not None else 0}


# ---- building topologies (the lab, the benchmarks) ---------------------------------------
def _set(sock: object, what: str, **kw: object) -> None:
    try:
        sock.link("set", **kw)  # type: ignore[attr-defined]
    except Exception as e:
        raise NetlinkError(f"cannot {what}", _nl_errno(e)) from None


def link_set(ns: str | None, ifname: str, *, up: bool | None = None, mtu: int | None = None,
             master: str | None = None, rename: str | None = None,
             to_netns: str | None = None) -> None:
    """Change one interface: state, MTU, bridge master, name, or namespace (in that order of
    the keywords given; a move or a rename is done last, since the old name is used before)."""
    with ipr(ns) as sock:
        idx = link_index(sock, ifname, ns)
        where = f"{ifname} in {_where(ns)}"
        if mtu is not None:
            _set(sock, f"set MTU {mtu} on {where}", index=idx, mtu=mtu)
        if master is not None:
            _set(sock, f"add {where} to bridge {master}", index=idx,
                 master=link_index(sock, master, ns))
        if rename is not None:
            _set(sock, f"rename {where} to {rename}", index=idx, ifname=rename)
        if up is not None:
            _set(sock, f"set {where} {'up' if up else 'down'}", index=idx,
                 state="up" if up else "down")
        if to_netns is not None:
            if not netns_exists(to_netns):
                raise NotFound(f"network namespace {to_netns} does not exist")
            _set(sock, f"move {where} to namespace {to_netns}", index=idx, net_ns_fd=to_netns)


def _add(ns: str | None, ifname: str, what: str, **kw: object) -> None:
    with ipr(ns) as sock:
        try:
            sock.link("add", ifname=ifname, **kw)  # type: ignore[attr-defined]
        except Exception as e:
            code = _nl_errno(e)
            if code == errno.EEXIST:
                raise AlreadyExists(f"interface {ifname} already exists in {_where(ns)}") from None
            raise NetlinkError(f"cannot add {what} {ifname} in {_where(ns)}", code) from None


def bridge_add(ns: str | None, ifname: str, mtu: int) -> None:
    """A bridge, up, with this MTU."""
    _add(ns, ifname, "bridge", kind="bridge")
    link_set(ns, ifname, mtu=mtu, up=True)


def veth_add(ns_a: str | None, if_a: str, ns_b: str, if_b: str, mtu: int) -> None:
    """A veth pair from `if_a` in `ns_a` to `if_b` in `ns_b`, both ends up with this MTU."""
    if not netns_exists(ns_b):
        raise NotFound(f"network namespace {ns_b} does not exist")
    _add(ns_a, if_a, "veth", kind="veth", peer={"ifname": if_b, "net_ns_fd": ns_b})
    link_set(ns_a, if_a, mtu=mtu, up=True)
    link_set(ns_b, if_b, mtu=mtu, up=True)


def vxlan_add(ns: str | None, ifname: str, vni: int, remote: str, local: str, dev: str,
              port: int = 4789) -> None:
    """A VXLAN device whose UDP socket lives in `ns`, sending to `remote` from `local` over
    `dev` (left down: it is usually moved into another namespace and brought up there)."""
    with ipr(ns) as sock:
        link = link_index(sock, dev, ns)
    _add(ns, ifname, "vxlan", kind="vxlan", vxlan_id=vni, vxlan_group=remote,
         vxlan_port=port, vxlan_link=link, vxlan_local=local)


def addr_add(ns: str | None, ifname: str, address: str, prefixlen: int) -> None:
    with ipr(ns) as sock:
        idx = link_index(sock, ifname, ns)
        try:
            sock.addr("add", index=idx, address=address,  # type: ignore[attr-defined]
                      prefixlen=prefixlen)
        except Exception as e:
            raise NetlinkError(f"cannot add {address}/{prefixlen} to {ifname} in {_where(ns)}",
                               _nl_errno(e)) from None


def route_add(ns: str | None, dst: str, ifname: str, prefsrc: str | None = None) -> None:
    """A route to `dst` out of `ifname` (on-link), optionally with a preferred source."""
    with ipr(ns) as sock:
        idx = link_index(sock, ifname, ns)
        kw: dict[str, object] = {"dst": dst, "oif": idx}
        if prefsrc:
            kw["prefsrc"] = prefsrc
        try:
            sock.route("add", **kw)  # type: ignore[attr-defined]
        except Exception as e:
            raise NetlinkError(f"cannot add route {dst} via {ifname} in {_where(ns)}",
                               _nl_errno(e)) from None


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
