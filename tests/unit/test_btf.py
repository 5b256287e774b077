"""BTF decoding against the kernel's own BTF, which any user may read."""

from __future__ import annotations

import os

import pytest

from eniplane.btf import KIND_STRUCT, Btf, StructCodec

VMLINUX = "/sys/kernel/btf/vmlinux"


@pytest.fixture(scope="module")
def vmlinux():
    if not os.access(VMLINUX, os.R_OK):
        pytest.skip("kernel BTF not readable")
    return Btf.parse(open(VMLINUX, "rb").read())


def test_struct_layout_matches_the_kernel(vmlinux):
    tid = vmlinux.find(KIND_STRUCT, "iphdr")
    c = vmlinux.codec(tid)
    assert isinstance(c, StructCodec) and c.size == 20
    assert {"ttl", "protocol", "check", "tot_len"} <= set(c.field_names) | {
        n for m in c.members if not m.name for n in m.codec.field_names}


def test_roundtrip_and_network_order(vmlinux):
    c = vmlinux.codec(vmlinux.find(KIND_STRUCT, "udphdr"))
    raw = bytes([0x12, 0xB5, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00])
    v = c.decode(raw)
    assert v["source"] == 4789 and v["dest"] == 53  # __be16 decodes in network order
    assert c.encode(v) == raw


def test_unknown_field_is_refused(vmlinux):
    c = vmlinux.codec(vmlinux.find(KIND_STRUCT, "udphdr"))
    with pytest.raises(ValueError, match="no field"):
        c.encode({"nope": 1})


def test_bad_magic():
    from eniplane.btf import BtfFormatError

    with pytest.raises(BtfFormatError):
        Btf.parse(b"\0" * 32)
