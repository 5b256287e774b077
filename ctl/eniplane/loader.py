"""Compile bpf/ with bcc, load the programs and pin programs and maps under the node's directory.

Contract: the only module that imports bcc, and only `eniplane up` and `eniplane upgrade` (and
tests that load the datapath) call it. Maps are declared pinned in C (maps.h), so a second load
finds and reuses them and their contents survive. Programs are pinned under <pin dir>/progs so
that commands that attach an interface later (a new VPC) need no compiler; `upgrade` stages a
new build's under <pin dir>/progs_new and says which build runs by build_hash. A verifier rejection becomes a LoadError that
carries the trimmed verifier log (asked for again when bcc got none: E2BIG). LLVM ends the
whole process (exit(1)) on a backend error that clang's front end let through: a C-level exit
hook then still prints the compiler's words and removes the pins this load created (and runs
the hooks of on_compiler_exit).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from . import bpfsys, paths
from .errors import LoadError

# eniplane.c's entry points, pinned under these names (tests/unit/test_consts.py holds them equal)
PROG_FABRIC, PROG_VPC = ATTACHABLE = ("xdp_fabric", "xdp_vpc")
# Entered only by tail calls from xdp_fabric, through fabric_calls (maps.h)
PROG_FABRIC_OPEN, PROG_FABRIC_ICMP = "xdp_fabric_open", "xdp_fabric_icmp"
PROG_FABRIC_REPLY, PROG_FABRIC_FRAG = "xdp_fabric_reply", "xdp_fabric_frag"
FABRIC_CALL_OPEN, FABRIC_CALL_ICMP, FABRIC_CALL_REPLY, FABRIC_CALL_FRAG = 0, 1, 2, 3
FABRIC_CALLS = {FABRIC_CALL_OPEN: PROG_FABRIC_OPEN, FABRIC_CALL_ICMP: PROG_FABRIC_ICMP,
                FABRIC_CALL_REPLY: PROG_FABRIC_REPLY, FABRIC_CALL_FRAG: PROG_FABRIC_FRAG}
# ...and through fabric_long (maps.h), its only slot
PROG_FABRIC_LONG = "xdp_fabric_long"
# Run by user space with BPF_PROG_TEST_RUN, never attached nor called: the sweep's and the
# flush's reaper (Datapath._reap)
PROG_FLOW_REAP = "xdp_flow_reap"
RUN_BY_USER = (PROG_FLOW_REAP,)
PROGRAMS = ATTACHABLE + tuple(FABRIC_CALLS.values()) + (PROG_FABRIC_LONG,) + RUN_BY_USER
# program arrays the loader fills: {pinned map: {slot: program}}
TAIL_CALLS = {"fabric_calls": FABRIC_CALLS, "fabric_long": {0: PROG_FABRIC_LONG}}
# redirect failures (eniplane.c): raw tracepoint programs, attached by pinned links under
# <progs>/links, named after their tracepoints
REDIRECT_WATCH = {"redirect_err": "xdp_redirect_err", "devmap_xmit": "xdp_devmap_xmit"}
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
# consts.h's MAX_FLOWS when no -D gives one: `eniplane up`'s default (tests/unit/test_consts.py)
DEFAULT_MAX_FLOWS = 262144

# What must still happen if the compiler exits the process under us (see the module's contract).
_on_c_exit: list[Callable[[], None]] = []


def on_compiler_exit(hook: Callable[[], None]) -> Callable[[], None]:
    """Have `hook` run too if the compiler ends the process during a load (a caller that made
    things outside the node's pins: the bench's namespaces). Returns what takes it back."""
    _on_c_exit.append(hook)

    def forget() -> None:
        if hook in _on_c_exit:
            _on_c_exit.remove(hook)
    return forget


def _run_c_exit_hooks(_: object) -> None:
    for hook in reversed(list(_on_c_exit)):  # a hook may take itself back
        try:
            hook()
        except Exception:
            pass


_C_EXIT_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(_run_c_exit_hooks)


class _CExitGuard:
    """Runs _on_c_exit if the C library's exit() runs while the guard is held. The hook is
    registered with __cxa_atexit under a handle of its own and retired with __cxa_finalize on
    the way out, so it never runs once the interpreter is gone (glibc; elsewhere a no-op)."""

    def __enter__(self) -> "_CExitGuard":
        self.handle = ctypes.create_string_buffer(1)
        try:
            libc = ctypes.CDLL(None)
            # getattr: a dunder name written inside a class body would be mangled
            register = getattr(libc, "__cxa_atexit")
            register.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
            self.finalize = getattr(libc, "__cxa_finalize")
            self.finalize.argtypes = [ctypes.c_void_p]
            register(ctypes.cast(_C_EXIT_HOOK, ctypes.c_void_p), None,
                     ctypes.addressof(self.handle))
        except (AttributeError, OSError):
            self.finalize = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.finalize is not None:
            hooks = list(_on_c_exit)
            _on_c_exit.clear()  # retiring calls the hook once: with nothing to do
            self.finalize(ctypes.addressof(self.handle))
            _on_c_exit.extend(hooks)


def bpf_dir() -> Path:
    return Path(os.environ.get("ENIPLANE_BPF_DIR", Path(__file__).resolve().parents[2] / "bpf"))


def check_bpffs() -> None:
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[1] == paths.BPFFS and parts[2] == "bpf":
                return
    raise LoadError(f"bpffs is not mounted on {paths.BPFFS} (mount -t bpf bpf {paths.BPFFS})")


def _trim_verifier_log(log: str, limit: int = 12) -> str:
    """The verifier's verdict and the instructions just before it: what a person needs."""
    lines = [ln for ln in log.splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(";")]
    for i, ln in enumerate(keep):
        if re.match(r"processed \d+ insns", ln):
            keep = keep[:i + 1]
            break
    return "\n".join(keep[-limit:])


class _CaptureStderr:
    """bcc writes compiler errors and verifier logs to fd 2; capture them for the error."""

    def __enter__(self) -> "_CaptureStderr":
        self.tmp = tempfile.TemporaryFile(mode="w+b")
        self.saved = os.dup(2)
        os.dup2(self.tmp.fileno(), 2)
        _on_c_exit.append(self._dying)
        return self

    def _dying(self) -> None:
        """The process is exiting inside the capture: give stderr back, with what was said."""
        os.dup2(self.saved, 2)
        self.tmp.seek(0)
        said = self.tmp.read().decode(errors="replace").strip().splitlines()[-5:]
        os.write(2, ("eniplane: the compiler ended the process:\n" + "\n".join(said) +
                     "\n").encode())

    def __exit__(self, *exc: object) -> None:
        _on_c_exit.remove(self._dying)
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.tmp.seek(0)
        self.text = self.tmp.read().decode(errors="replace")
        self.tmp.close()


def compile_and_pin(node: str, defines: dict[str, int] | None = None) -> dict[str, int]:
    """Load every program; returns {program name: fd}. Maps and programs end up pinned."""
    check_bpffs()
    created = not paths.pin_dir(node).exists()

    def forget() -> None:  # leave nothing half-pinned behind a failed load
        if created:
            shutil.rmtree(paths.pin_dir(node), ignore_errors=True)

    _on_c_exit.append(forget)
    try:
        return _compile_and_pin(node, defines)
    except BaseException:
        forget()
        raise
    finally:
        _on_c_exit.remove(forget)


def _load_func(bpf: Any, name: str, prog_type: int) -> Any:
    """bcc's load_func, with the verifier's log, trimmed, in the error when it refuses. On
    E2BIG bcc asks for no log and says "too large ... at most 4096 insns", which is the limit
    for loaders without CAP_BPF; for this one it is the verifier's budget (a million
    instructions explored), so the verdict is asked for again, with the log."""
    cap = _CaptureStderr()
    try:
        with cap:
            return bpf.load_func(name.encode(), prog_type)
    except Exception as e:
        reason = str(e).split(":")[-1].strip()
        log = cap.text
        if "too large" in log:
            reason = "E2BIG, more than the verifier will explore"
            log = bpfsys.prog_load_log(prog_type, bpf.dump_func(name.encode()))
        raise LoadError(f"the verifier rejected {name} ({reason}):\n"
                        f"{_trim_verifier_log(log)}") from None


def _compile_and_pin(node: str, defines: dict[str, int] | None,
                     stage: bool = False) -> dict[str, int]:
    """stage: pin the programs under progs_new/ and leave fabric_calls alone (`upgrade` swaps
    them in itself), and refuse maps pinned with another type or size too."""
    maps_dir = paths.maps_dir(node)
    progs_dir = staged_progs_dir(node) if stage else paths.progs_dir(node)
    maps_dir.mkdir(parents=True, exist_ok=True)
    progs_dir.mkdir(parents=True, exist_ok=True)
    from bcc import BPF  # deferred: only loading compiles

    src = bpf_dir() / "eniplane.c"
    cflags = [f'-DPIN_DIR="{maps_dir}"', f"-I{bpf_dir()}", "-Wno-unused-function"]
    # FLOW_SAFE_ENTRIES (consts.h) depends on how many CPUs can park free LRU nodes
    defines = {"NR_POSSIBLE_CPUS": bpfsys.possible_cpus(), **kernel_offsets(), **(defines or {})}
    for k, v in defines.items():
        cflags.append(f"-D{k}={int(v)}")
    cap = _CaptureStderr()
    try:
        with cap, _CExitGuard():
            bpf = BPF(src_file=str(src).encode(), cflags=cflags)
    except Exception as e:
        msg = "\n".join(ln for ln in cap.text.splitlines() if "error" in ln)[:2000]
        raise LoadError(f"cannot compile {src}: {msg or e}") from None
    _check_pinned_maps(bpf, maps_dir, shapes=stage)
    fds: dict[str, int] = {}
    for name in PROGRAMS:
        fn = _load_func(bpf, name, BPF.XDP)
        pin = progs_dir / name
        if pin.exists():
            pin.unlink()
        bpfsys.obj_pin(fn.fd, str(pin))
        fds[name] = os.dup(fn.fd)
    if not stage:
        fill_fabric_calls(node, fds)
    attach_redirect_watch(bpf, progs_dir)  # staged: upgrade moves its links in with the pins
    bpf.cleanup()  # the pins and attachments keep programs and maps alive
    return fds


def fill_fabric_calls(node: str, fds: dict[str, int]) -> None:
    """Point the program arrays' slots (TAIL_CALLS) at these programs. Each slot's update is
    atomic: a tail call made meanwhile enters the old program or the new one. A program that
    `fds` lacks (an earlier build's, put back by a failed upgrade) leaves its slot as it is."""
    for table, slots in TAIL_CALLS.items():
        calls = bpfsys.obj_get(str(paths.maps_dir(node) / table))
        try:
            for slot, name in slots.items():
                if name in fds:
                    bpfsys.map_update(calls, slot.to_bytes(4, "little"),
                                      fds[name].to_bytes(4, "little"))
        finally:
            os.close(calls)


def kernel_offsets(path: str = VMLINUX_BTF) -> dict[str, int]:
    """Where the redirect-failure programs find a net_device's ifindex and namespace, from the
    running kernel's BTF; {} (no such programs) on a kernel without BTF."""
    from .btf import KIND_STRUCT, Btf, BtfFormatError

    try:
        with open(path, "rb") as f:
            btf = Btf.parse(f.read())
    except (OSError, BtfFormatError):
        return {}

    def offset(struct: str, members: str) -> int | None:
        tid = btf.find(KIND_STRUCT, struct)
        off = 0
        for name in members.split("."):
            t = btf.types[tid] if tid else None
            while t is not None and t.kind not in (KIND_STRUCT,) and t.size_or_type:
                tid = t.size_or_type  # through typedefs and qualifiers
                t = btf.types[tid]
            hit = [m for m in (t.extra or []) if m[0] == name] if t else []
            if not hit or hit[0][2] % 8:
                return None
            off += hit[0][2] // 8
            tid = hit[0][1]
        return off

    found = {"NETDEV_IFINDEX_OFF": offset("net_device", "ifindex"),
             "NETDEV_NET_OFF": offset("net_device", "nd_net.net"),
             "NET_NS_INUM_OFF": offset("net", "ns.inum")}
    return {} if None in found.values() else found  # type: ignore[return-value]


def attach_redirect_watch(bpf, progs_dir: Path) -> None:
    """Load the redirect-failure programs and attach them by links pinned under progs/links:
    they outlive this process, and `down` (which removes progs/) detaches them. A reload
    attaches the new programs before the old links go: no failure goes uncounted."""
    from bcc import BPF

    if not bpf.module or "redirect_err" not in _functions(bpf):
        return
    links = progs_dir / "links"
    links.mkdir(exist_ok=True)
    for name, tracepoint in REDIRECT_WATCH.items():
        fn = _load_func(bpf, name, BPF.RAW_TRACEPOINT)
        link = bpfsys.raw_tracepoint_open(fn.fd, tracepoint)
        try:
            pin = links / tracepoint
            pin.unlink(missing_ok=True)
            bpfsys.obj_pin(link, str(pin))
        finally:
            os.close(link)


def _functions(bpf) -> set[str]:
    from bcc import libbcc

    lib = libbcc.lib
    return {lib.bpf_function_name(bpf.module, i).decode()
            for i in range(lib.bpf_num_functions(bpf.module))}


def _check_pinned_maps(bpf, maps_dir: Path, shapes: bool = False) -> None:
    """bcc reuses a pinned map whatever its layout; programs built for another one would read
    past its values (the verifier then refuses them with an offset that explains nothing). Say
    which map differs before anything is loaded. The sizes are the compiler's (bcc's table
    description), not ctypes' rendering of them. shapes (`upgrade`): the type and number of
    entries too, since bcc also reuses a map of another type or size (a larger MAX_FLOWS, a new
    tail-call slot), which the programs would index past or size their limits by."""
    from bcc import libbcc

    lib = libbcc.lib
    for fn in (lib.bpf_table_key_size, lib.bpf_table_leaf_size):
        fn.restype, fn.argtypes = ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_char_p]
    for fn in (lib.bpf_table_type, lib.bpf_table_max_entries):
        fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]
    for name in sorted(p.name for p in maps_dir.iterdir()):
        fd = lib.bpf_table_fd(bpf.module, name.encode())
        if fd < 0:
            continue
        want_k = lib.bpf_table_key_size(bpf.module, name.encode())
        want_v = lib.bpf_table_leaf_size(bpf.module, name.encode())
        want_t = lib.bpf_table_type(bpf.module, name.encode())
        want_n = lib.bpf_table_max_entries(bpf.module, name.encode())
        have = bpfsys.map_info(fd)
        if want_v and (have.key_size, have.value_size) != (want_k, want_v):
            bpf.cleanup()
            raise LoadError(
                f"the pinned map {name} has {have.key_size}-byte keys and {have.value_size}-byte "
                f"values, this datapath's has {want_k} and {want_v}: it was made by another "
                f"version of eniplane. `eniplane down` removes the node's maps (its flows go "
                f"with them), then `eniplane up` makes them anew")
        if shapes and (have.type, have.max_entries) != (want_t, want_n):
            types = bpfsys.MAP_TYPE_NAMES
            bpf.cleanup()
            raise LoadError(
                f"the pinned map {name} is a {types.get(have.type, have.type)} of "
                f"{have.max_entries} entries, this datapath's is a "
                f"{types.get(want_t, want_t)} of {want_n}: it was made by another version of "
                f"eniplane or with other sizes. `eniplane down` removes the node's maps (its "
                f"flows go with them), then `eniplane up` makes them anew")


def pinned_prog_fd(node: str, name: str) -> int:
    return bpfsys.obj_get(str(paths.progs_dir(node) / name))


# ---- staged loads for `eniplane upgrade` ------------------------------------------------------
STAGED_PROGS = "progs_new"  # bpffs refuses dots in names


def staged_progs_dir(node: str) -> Path:
    return paths.pin_dir(node) / STAGED_PROGS


def effective_defines(defines: dict[str, int] | None) -> dict[str, int]:
    """The -D values a load compiles with: the caller's, over the machine's CPU count and the
    default flow table size (`up` names MAX_FLOWS, the tests' loads often leave it out)."""
    return {"NR_POSSIBLE_CPUS": bpfsys.possible_cpus(), "MAX_FLOWS": DEFAULT_MAX_FLOWS,
            **(defines or {})}


def build_hash(defines: dict[str, int] | None = None, src: Path | None = None) -> str:
    """What a load of bpf/ (or `src`) with these -D values would run, as a sha256 hex digest of
    every file's name and bytes and of the defines: equal hashes, equal programs. None of the
    compiler's own version goes in (the same source built by another clang counts as current)."""
    import hashlib

    src = src or bpf_dir()
    if not src.is_dir():
        raise LoadError(f"no datapath sources at {src} (ENIPLANE_BPF_DIR?)")
    h = hashlib.sha256()
    for p in sorted(q for q in src.rglob("*") if q.is_file()):
        rel = p.relative_to(src).as_posix().encode()
        data = p.read_bytes()
        h.update(len(rel).to_bytes(4, "little") + rel + len(data).to_bytes(8, "little") + data)
    for k, v in sorted(effective_defines(defines).items()):
        h.update(f"-D{k}={int(v)}\n".encode())
    return h.hexdigest()


def compile_staged(node: str, defines: dict[str, int] | None = None) -> dict[str, int]:
    """Compile bpf/ and load its programs against the node's pinned maps while the running ones
    stay attached; pin them under <pin dir>/progs_new and return {program name: fd}. A pinned
    map of another layout (key or value size, type, size) refuses the load before any program
    is loaded. Maps this version adds are created and pinned; on any failure they, and the
    staged pins, are removed again, so the node is as it was."""
    check_bpffs()
    maps_dir = paths.maps_dir(node)
    if not (maps_dir / "fabric_calls").exists():
        raise LoadError(f"node {node} has no pinned maps to upgrade (eniplane up first)")
    staged = staged_progs_dir(node)
    shutil.rmtree(staged, ignore_errors=True)  # left by an upgrade that died half-way
    maps_before = {p.name for p in maps_dir.iterdir()}

    def forget() -> None:
        shutil.rmtree(staged, ignore_errors=True)
        for p in maps_dir.iterdir():
            if p.name not in maps_before:
                p.unlink(missing_ok=True)

    _on_c_exit.append(forget)
    try:
        return _compile_and_pin(node, defines, stage=True)
    except BaseException:
        forget()
        raise
    finally:
        _on_c_exit.remove(forget)
