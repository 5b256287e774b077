"""bench.profile's pure parts: which C function a source line belongs to, and BTF's strings."""

from __future__ import annotations

import struct

from bench import profile
from eniplane.loader import bpf_dir


def test_functions_of_a_clang_formatted_file(tmp_path):
    src = tmp_path / "x.c"
    src.write_text("#include <a.h>\n"
                   "struct s {\n    int a;\n};\n"
                   "static __always_inline int helper(int a,\n                                  int b);\n"
                   "static __always_inline int helper(int a,\n                                  int b)\n"
                   "{\n    return a + b;\n}\n"
                   "\n"
                   "int prog(struct xdp_md *ctx)\n{\n    return helper(1, 2);\n}\n")
    f = profile.functions_of(src)
    assert 3 not in f  # a struct's body is not a function
    assert 5 not in f  # nor is a prototype
    assert f[10] == "helper" and f[11] == "helper"
    assert 12 not in f
    assert f[15] == "prog"


def test_functions_of_eniplane_c_names_its_stages():
    lines = (bpf_dir() / "eniplane.c").read_text().splitlines()
    f = profile.functions_of(bpf_dir() / "eniplane.c")
    where = {text.strip(): no for no, text in enumerate(lines, 1)}
    assert f[where["int xdp_fabric(struct xdp_md *ctx)"] + 2] == "xdp_fabric"
    assert f[where["int xdp_vpc(struct xdp_md *ctx)"] + 2] == "xdp_vpc"
    hot = next(no for no, t in enumerate(lines, 1) if "h->tx_packets++;" in t)
    assert f[hot] == "xdp_fabric"
    probe = next(no for no, t in enumerate(lines, 1) if "return bpf_htons((__u16)(lo + off));" in t)
    assert f[probe] == "probe_port"


def test_btf_strings_and_offsets():
    strings = b"\0eniplane.c\0    x = 1;\0"
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 0, 0, len(strings))
    s = profile._btf_strings(hdr + strings)
    assert profile._string(s, 1) == "eniplane.c"
    assert profile._string(s, 12) == "    x = 1;"
