"""Hitless upgrade: the running node's programs swapped for the current build of bpf/, its maps
kept (flows, counters, learned MACs, settings).

Contract: `upgrade(node)` loads the new programs against the node's pinned maps while the old
ones keep running (pinned under progs_new/), and refuses before anything changes when a pinned
map's layout differs or an interface runs a program that is not the node's. Then it swaps: each
attached interface's XDP program in one netlink request (XDP_FLAGS_REPLACE, the old program
expected), fabric_calls' slots one atomic update each, then the new pins over the old ones; the
build is recorded in node.json. A swap that fails half-way puts back what it had swapped.
`needed(node)` says whether what runs is not the current build (the agent upgrades on start
when it is not); `build_status` is what `status` shows.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from . import bpfsys, loader, lock, netlink, paths
from .errors import EniplaneError, LoadError, NotFound
from .loader import PROGRAMS
from .node import NodeRecord, pinned_prog_ids


def running_defines(rec: NodeRecord) -> dict[str, int]:
    """The -D values the running programs were built with. A record from before builds were
    recorded has none: the flow table's size is read from its pinned map (the one -D `up`
    takes); any other size a pinned map has is checked by the staged load."""
    if "defines" in rec.build:
        return {k: int(v) for k, v in rec.build["defines"].items()}
    from .maps import PinnedMap

    with PinnedMap(str(paths.maps_dir(rec.node) / "flows")) as m:
        return {"MAX_FLOWS": m.max_entries}


def build_status(rec: NodeRecord) -> dict:
    """running: the hash recorded at the last `up` or `upgrade` (None before builds were
    recorded); current: what bpf/ builds now with the same defines (None if bpf/ is
    unreadable); up_to_date only when both are known and equal."""
    running = rec.build.get("hash")
    try:
        current: str | None = loader.build_hash(running_defines(rec))
    except (OSError, EniplaneError):
        current = None
    return {"running": running, "current": current,
            "up_to_date": running is not None and running == current}


@dataclass
class _Target:
    ifname: str
    program: str
    mode: str
    old_id: int


def _prog_name(prog_id: int) -> str:
    fd = bpfsys.prog_get_fd_by_id(prog_id)
    try:
        return bpfsys.prog_info(fd).name.decode(errors="replace")
    finally:
        os.close(fd)


def _targets(rec: NodeRecord, pinned: dict[str, int], notes: list[str]) -> list[_Target]:
    """The interfaces whose program is swapped. A program id other than the pinned one is
    still the node's when it bears the same name (an upgrade that died between the swap and
    the pins); anything else was attached by someone else, and the upgrade refuses."""
    out = []
    for ifname, entry in rec.interfaces.items():
        try:
            info = netlink.link_get(rec.netns, ifname)
        except NotFound:
            notes.append(f"{ifname}: interface not found, skipped")
            continue
        if not info["xdp_prog_id"]:
            notes.append(f"{ifname}: no XDP program attached, skipped")
            continue
        prog, old_id = entry["program"], info["xdp_prog_id"]
        if old_id != pinned[prog] and _prog_name(old_id) != prog[:15]:  # kernel names: 15 chars
            raise EniplaneError(
                f"{ifname} runs XDP program id {old_id} ({_prog_name(old_id)}), not node "
                f"{rec.node}'s {prog}: not replacing it (nothing was changed)")
        out.append(_Target(ifname, prog, info["xdp_mode"] or entry["mode"], old_id))
    return out


def needed(node: str) -> bool:
    """True when the node's programs are not the current build of bpf/, or an interface runs
    a program other than the pinned one (an upgrade that stopped half-way)."""
    rec = NodeRecord.load(node)
    if not build_status(rec)["up_to_date"]:
        return True
    pinned = pinned_prog_ids(node, missing_ok=True)
    return any(t.old_id != pinned[t.program] for t in _targets(rec, pinned, []))


@lock.locked
def upgrade(node: str, force: bool = False) -> dict:
    """Swap in the current build (see the module's contract); nothing is done when it already
    runs, unless force. Returns what changed: old and new program ids per interface and per
    program, the old and new build hashes, maps the new build added, and notes."""
    rec = NodeRecord.load(node)
    defines = running_defines(rec)
    old_hash, new_hash = rec.build.get("hash"), loader.build_hash(defines)
    # a build before this one may have had fewer programs (xdp_fabric_long came later)
    pinned = pinned_prog_ids(node, missing_ok=True)
    notes: list[str] = []
    targets = _targets(rec, pinned, notes)
    report: dict = {"node": node, "changed": False, "build": {"old": old_hash, "new": new_hash},
                    "interfaces": [], "programs": {}, "maps_added": [], "notes": notes}
    if not force and old_hash == new_hash and all(t.old_id == pinned[t.program]
                                                  for t in targets):
        return report
    maps_before = {p.name for p in paths.maps_dir(node).iterdir()}
    try:
        new_fds = loader.compile_staged(node, defines)
    except LoadError as e:
        raise LoadError(f"upgrade refused, nothing was changed: {e}") from None
    try:
        _swap(node, rec, targets, new_fds)
        new_ids = {name: bpfsys.prog_info(fd).id for name, fd in new_fds.items()}
    except BaseException:
        for p in paths.maps_dir(node).iterdir():  # nothing runs that uses them any more
            if p.name not in maps_before:
                p.unlink(missing_ok=True)
        raise
    finally:
        for fd in new_fds.values():
            os.close(fd)
    rec.build = {"hash": new_hash, "defines": defines}
    rec.save()
    report["changed"] = True
    report["interfaces"] = [{"ifname": t.ifname, "program": t.program, "mode": t.mode,
                             "old_id": t.old_id, "new_id": new_ids[t.program]} for t in targets]
    report["programs"] = {name: {"old_id": pinned.get(name), "new_id": new_ids[name]}
                          for name in PROGRAMS}
    report["maps_added"] = sorted({p.name for p in paths.maps_dir(node).iterdir()} - maps_before)
    return report


def _swap(node: str, rec: NodeRecord, targets: list[_Target], new_fds: dict[str, int]) -> None:
    """Interfaces first, then the tail-call slots, then the pins. Between the first and the
    last step old and new programs call each other through fabric_calls; they share the maps
    whose layouts the staged load checked, so either mix handles a packet whole."""
    swapped: list[_Target] = []
    try:
        for t in targets:
            old_fd = bpfsys.prog_get_fd_by_id(t.old_id)
            try:
                netlink.xdp_replace(rec.netns, t.ifname, new_fds[t.program], old_fd, t.mode)
            finally:
                os.close(old_fd)
            swapped.append(t)
        loader.fill_fabric_calls(node, new_fds)
    except BaseException:
        _put_back(node, rec, swapped, new_fds)
        raise
    staged = loader.staged_progs_dir(node)
    for name in PROGRAMS:  # a rename over each pin: every name always holds a program
        os.replace(staged / name, paths.progs_dir(node) / name)
    links = staged / "links"  # the redirect-failure watch (loader.attach_redirect_watch)
    if links.is_dir():
        (paths.progs_dir(node) / "links").mkdir(exist_ok=True)
        for pin in links.iterdir():  # the old link's pin goes, and with it the old attachment
            os.replace(pin, paths.progs_dir(node) / "links" / pin.name)
        links.rmdir()
    staged.rmdir()


def _put_back(node: str, rec: NodeRecord, swapped: list[_Target],
              new_fds: dict[str, int]) -> None:
    """Best effort: the old programs are still pinned (and alive) until the pins are replaced."""
    for t in reversed(swapped):
        try:
            old_fd = bpfsys.prog_get_fd_by_id(t.old_id)
            try:
                netlink.xdp_replace(rec.netns, t.ifname, old_fd, new_fds[t.program], t.mode)
            finally:
                os.close(old_fd)
        except EniplaneError:
            pass
    old_fds: dict[str, int] = {}
    try:
        for name in PROGRAMS:
            try:
                old_fds[name] = loader.pinned_prog_fd(node, name)
            except EniplaneError:  # one the old build did not have: its slot stays as it is
                pass
        loader.fill_fabric_calls(node, old_fds)
    except EniplaneError:
        pass
    finally:
        for fd in old_fds.values():
            os.close(fd)
    shutil.rmtree(loader.staged_progs_dir(node), ignore_errors=True)
