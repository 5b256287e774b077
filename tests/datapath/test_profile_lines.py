"""bench.profile on the loaded programs: every address of a JIT image names a line of the real
source (bcc compiles eniplane.c as "main.c", with lines of its own), and a sample counts for the
innermost line of its call chain inside the image."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench import profile
from eniplane import bpfsys
from eniplane.loader import bpf_dir

SRC = (bpf_dir() / "eniplane.c").read_text().splitlines()


def _source_line(jit: profile.JitLines, needle: str) -> tuple[int, profile.Line]:
    """The JIT address and line record of the first line whose text holds `needle`."""
    for addr, ln in zip(jit.addrs, jit.lines):
        if needle in ln.text:
            return addr, ln
    raise AssertionError(f"no line with {needle!r}")


def test_lines_land_on_eniplane_c(env):
    jit = profile.JitLines(env.fds["xdp_fabric"])
    assert jit.start and jit.end > jit.start
    assert all(jit.holds(a) for a in jit.addrs)
    on_file = [ln for ln in jit.lines if Path(ln.file).name == "eniplane.c"]
    assert len(on_file) > 200
    # bcc rewrites map calls; the line still lands where the source has the call
    _, ln = _source_line(jit, "egress, XDP_DROP")
    assert "tx_ports.redirect_map(egress, XDP_DROP)" in SRC[ln.line - 1]
    # and a line it does not rewrite lands on its own text
    _, ln = _source_line(jit, "h->tx_packets++;")
    assert SRC[ln.line - 1].strip() == "h->tx_packets++;"
    funcs = profile.functions_of(bpf_dir() / "eniplane.c")
    assert funcs[ln.line] == "xdp_fabric"


def test_a_sample_counts_for_its_innermost_line_in_the_image(env):
    jit = profile.JitLines(env.fds["xdp_vpc"])
    addr, _ = _source_line(jit, "h->rx_packets++;")
    outside = jit.end + 0x1000
    got = profile.attribute([[addr], [outside, addr + 1], [outside], [outside, outside + 8]],
                            jit)
    assert got == {jit.line_of(addr): 2}


def test_the_annotated_image_gives_each_instruction_its_share_under_its_line(env):
    fd = env.fds["xdp_fabric"]
    jit = profile.JitLines(fd)
    addr, ln = _source_line(jit, "egress, XDP_DROP")
    off = addr - jit.start
    image = bpfsys.prog_code(fd, jited=True)
    text = profile.annotated(jit, image, Counter({off: 3, off + 10**6: 1}), 40.0)
    lines = text.splitlines()
    at = next(i for i, t in enumerate(lines) if t.split()[1:2] == [f"{off:x}:"])
    # 3 of 4 samples: 30 of the 40 ns, on the redirect line's first instruction
    assert lines[at].split()[0] == "30.0", lines[at]
    header = next(t for t in reversed(lines[:at]) if t.startswith("----"))
    assert header == f"---- eniplane.c:{ln.line} {ln.text}"
    body = [t for t in lines[1:] if not t.startswith("----")]
    assert len(body) > 1000 and all(t.split()[1].endswith(":") for t in body)
