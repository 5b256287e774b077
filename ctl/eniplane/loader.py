"""Compile bpf/ with bcc, load the programs and pin programs and maps under the node's directory.

Contract: the only module that imports bcc, and only `eniplane up` (and tests that load the
datapath) call it. Maps are declared pinned in C (maps.h), so a second load finds and reuses them
and their contents survive. Programs are pinned under <pin dir>/progs so that commands that attach
an interface later (a new VPC) need no compiler. A verifier rejection becomes a LoadError that
carries the trimmed verifier log.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from . import bpfsys, paths
from .errors import LoadError

PROGRAMS = ("xdp_fabric", "xdp_vpc")


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
        return self

    def __exit__(self, *exc: object) -> None:
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.tmp.seek(0)
        self.text = self.tmp.read().decode(errors="replace")
        self.tmp.close()


def compile_and_pin(node: str, defines: dict[str, int] | None = None) -> dict[str, int]:
    """Load every program; returns {program name: fd}. Maps and programs end up pinned."""
    check_bpffs()
    created = not paths.pin_dir(node).exists()
    try:
        return _compile_and_pin(node, defines)
    except BaseException:
        if created:  # leave nothing half-pinned behind a failed load
            shutil.rmtree(paths.pin_dir(node), ignore_errors=True)
        raise


def _compile_and_pin(node: str, defines: dict[str, int] | None) -> dict[str, int]:
    maps_dir = paths.maps_dir(node)
    progs_dir = paths.progs_dir(node)
    maps_dir.mkdir(parents=True, exist_ok=True)
    progs_dir.mkdir(parents=True, exist_ok=True)
    from bcc import BPF  # deferred: only loading compiles

    src = bpf_dir() / "eniplane.c"
    cflags = [f'-DPIN_DIR="{maps_dir}"', f"-I{bpf_dir()}", "-Wno-unused-function"]
    for k, v in (defines or {}).items():
        cflags.append(f"-D{k}={int(v)}")
    cap = _CaptureStderr()
    try:
        with cap:
            bpf = BPF(src_file=str(src).encode(), cflags=cflags)
    except Exception as e:
        msg = "\n".join(ln for ln in cap.text.splitlines() if "error" in ln)[:2000]
        raise LoadError(f"cannot compile {src}: {msg or e}") from None
    fds: dict[str, int] = {}
    for name in PROGRAMS:
        cap = _CaptureStderr()
        try:
            with cap:
                fn = bpf.load_func(name.encode(), BPF.XDP)
        except Exception as e:
            reason = str(e).split(":")[-1].strip()
            raise LoadError(f"the verifier rejected {name} ({reason}):\n"
                            f"{_trim_verifier_log(cap.text)}") from None
        pin = progs_dir / name
        if pin.exists():
            pin.unlink()
        bpfsys.obj_pin(fn.fd, str(pin))
        fds[name] = os.dup(fn.fd)
    bpf.cleanup()  # the pins and attachments keep programs and maps alive
    return fds


def pinned_prog_fd(node: str, name: str) -> int:
    return bpfsys.obj_get(str(paths.progs_dir(node) / name))
