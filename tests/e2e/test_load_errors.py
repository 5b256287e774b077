"""A program the verifier rejects: one clear error with the verifier's words, nothing left."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eniplane import loader, node as nodemod, paths
from eniplane.errors import LoadError

REPO = Path(__file__).resolve().parents[2]


def _xdp_vpc_starting_with(tmp_path: Path, code: str) -> Path:
    """A copy of bpf/ whose xdp_vpc runs `code` first (after its data pointers): its directory."""
    bad = tmp_path / "bpf"
    shutil.copytree(loader.bpf_dir(), bad)
    src = (bad / "eniplane.c").read_text()
    anchor = "void *data_end = (void *)(long)ctx->data_end;"
    at = src.index(anchor, src.index("int xdp_vpc(struct xdp_md *ctx)")) + len(anchor)
    (bad / "eniplane.c").write_text(src[:at] + code + src[at:])
    return bad


def test_verifier_rejection_is_reported_and_rolled_back(lab, tmp_path, monkeypatch):
    # an unchecked packet read in xdp_vpc: exactly what the verifier exists to refuse
    bad = _xdp_vpc_starting_with(tmp_path,
                                 "\n    if (*(volatile __u32 *)(data + 64)) return XDP_DROP;")
    monkeypatch.setenv("ENIPLANE_BPF_DIR", str(bad))
    name = f"{lab.prefix}-bad"
    try:
        with pytest.raises(LoadError) as e:
            nodemod.up(name, "vpcb", lab.fabric_ip, lab.node_ns)
    finally:  # had the load wrongly succeeded, leave nothing behind for the next test
        if nodemod.is_up(name):
            nodemod.down(name)
    msg = str(e.value)
    assert "xdp_vpc" in msg and "invalid access to packet" in msg
    assert len(msg.splitlines()) <= 14
    assert not paths.pin_dir(name).exists()
    assert not nodemod.is_up(name)
    from eniplane import netlink
    assert netlink.link_get(lab.node_ns, "vpcb")["xdp_prog_id"] == 0


def test_a_program_past_the_verifiers_budget_is_reported_with_its_verdict(lab, tmp_path,
                                                                          monkeypatch):
    """E2BIG: bcc reports it without the verifier's log, as "too large ... at most 4096 insns"
    (the limit of loaders without CAP_BPF). The error says what the verifier said instead."""
    # a loop of a million rounds without a branch in them: the verifier walks every round
    bad = _xdp_vpc_starting_with(tmp_path, """
    __u32 walk = (__u32)(data_end - data);
#pragma clang loop unroll(disable)
    for (__u32 i = 0; i < 1000000; i++)
        walk = walk * 3 + (walk >> 1) + i;
    if (walk == 7)
        return XDP_DROP;""")
    monkeypatch.setenv("ENIPLANE_BPF_DIR", str(bad))
    name = f"{lab.prefix}-big"
    try:
        with pytest.raises(LoadError) as e:
            nodemod.up(name, "vpcb", lab.fabric_ip, lab.node_ns)
    finally:
        if nodemod.is_up(name):
            nodemod.down(name)
    msg = str(e.value)
    assert "xdp_vpc" in msg and "more than the verifier will explore" in msg, msg
    # the verifier's own verdict (it gives up on the jumps or on the million instructions)
    assert "too complex" in msg or "too large" in msg, msg
    assert "(limit 1000000)" in msg and "at most 4096" not in msg, msg
    assert len(msg.splitlines()) <= 14
    assert not paths.pin_dir(name).exists()


def test_a_failed_load_leaves_no_pins(lab, tmp_path, monkeypatch):
    """The loader alone (as the datapath tests use it) cleans up after a compile error."""
    bad = tmp_path / "bpf"
    shutil.copytree(loader.bpf_dir(), bad)
    (bad / "types.h").write_text((bad / "types.h").read_text() + "\nthis is not C;\n")
    monkeypatch.setenv("ENIPLANE_BPF_DIR", str(bad))
    name = f"{lab.prefix}-badc"
    with pytest.raises(LoadError, match="cannot compile"):
        loader.compile_and_pin(name)
    assert not paths.pin_dir(name).exists()


def _bpf_that_llvm_ends(tmp_path: Path) -> Path:
    """A copy of bpf/ with a 32-bit atomic OR: clang accepts it, the BPF backend (before
    -mcpu=v3) gives up and exit()s the process. Its directory."""
    bad = tmp_path / "bpf"
    shutil.copytree(loader.bpf_dir(), bad)
    src = (bad / "eniplane.c").read_text()
    anchor = "    count(st, STAT_rx_vpc);"
    src = src.replace(anchor, anchor + "\n    if (st) __sync_fetch_and_or((__u32 *)st, 1);", 1)
    (bad / "eniplane.c").write_text(src)
    return bad


def test_a_compiler_that_ends_the_process_still_says_why(lab, tmp_path):
    """LLVM's backend errors exit() the process from inside bcc: the loader's exit hook prints
    the compiler's words and removes the pins the load had created."""
    import subprocess
    import sys

    bad = _bpf_that_llvm_ends(tmp_path)
    name = f"{lab.prefix}-llvm"
    p = subprocess.run([sys.executable, "-c",
                        f"from eniplane import loader; loader.compile_and_pin({name!r})"],
                       env={**__import__("os").environ, "ENIPLANE_BPF_DIR": str(bad)},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert "the compiler ended the process" in p.stderr and "atomic" in p.stderr, p.stderr
    assert not paths.pin_dir(name).exists()


def test_a_compiler_that_ends_the_process_leaves_no_bench_namespaces(tmp_path):
    """The bench's topology, staging a node whose compile LLVM ends: its namespaces go too."""
    import subprocess
    import sys

    bad = _bpf_that_llvm_ends(tmp_path)
    code = ("from bench import topo as T, throughput as TP\n"
            "t = T.Topo()\n"
            "print(t.prefix, flush=True)\n"
            "t.stage(TP.FWD_SPORT_OFF, TP.RET_SPORT_OFF, 4096)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                       env={**__import__("os").environ, "ENIPLANE_BPF_DIR": str(bad)},
                       capture_output=True, text=True, timeout=300)
    prefix = p.stdout.split()[0]
    assert p.returncode != 0 and "the compiler ended the process" in p.stderr, p.stderr
    from eniplane import netlink
    assert not [r for r in ("gen", "node", "sink") if netlink.netns_exists(f"{prefix}-{r}")]
    assert not paths.pin_dir(f"{prefix}-node").exists()


def test_pinned_maps_of_another_layout_are_named_not_misread(lab, tmp_path, monkeypatch):
    """Maps pinned by a datapath whose flow_guard was larger: loading this one says which map
    differs and how, loads nothing, and leaves the existing pins alone (they hold flows)."""
    other = tmp_path / "bpf"
    shutil.copytree(loader.bpf_dir(), other)
    types = (other / "types.h").read_text()
    types = types.replace("    __u64 swept;", "    __u64 swept;\n    __u64 extra;")
    types = types.replace("sizeof(struct flow_guard) == 40", "sizeof(struct flow_guard) == 48")
    (other / "types.h").write_text(types)
    name = f"{lab.prefix}-layout"
    monkeypatch.setenv("ENIPLANE_BPF_DIR", str(other))
    try:
        for fd in loader.compile_and_pin(name).values():
            import os
            os.close(fd)
        monkeypatch.delenv("ENIPLANE_BPF_DIR")
        with pytest.raises(LoadError) as e:
            loader.compile_and_pin(name)
        msg = str(e.value)
        assert "flow_guard" in msg and "48-byte values" in msg and "40" in msg, msg
        assert "eniplane down" in msg
        assert (paths.maps_dir(name) / "flows").exists()
    finally:
        shutil.rmtree(paths.pin_dir(name), ignore_errors=True)
