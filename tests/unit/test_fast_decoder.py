"""maps.fast_decoder decodes what a StructCodec decodes, to the same value, member for member
(it replaces codec.decode when whole tables are read), and keeps codec.decode where it cannot."""

from __future__ import annotations

import random

from eniplane.btf import (ArrayCodec, CharArrayCodec, EnumCodec, IntCodec, Ipv4Codec, MacCodec,
                          Member, StructCodec)
from eniplane.maps import fast_decoder


def every_kind() -> StructCodec:
    inner = StructCodec(4, [Member("a", 0, IntCodec(2)),
                            Member("b", 2, IntCodec(2, big_endian=True))], name="inner")
    return StructCodec(64, [
        Member("last_seen_ns", 0, IntCodec(8)),
        Member("signed", 8, IntCodec(4, signed=True)),
        Member("port", 12, IntCodec(2, big_endian=True)),
        Member("sport", 14, IntCodec(2, signed=True, big_endian=True)),
        Member("addr", 16, Ipv4Codec()),
        Member("mac", 20, MacCodec()),
        Member("pad", 26, IntCodec(2)),
        Member("name", 28, CharArrayCodec(8)),
        Member("kind", 36, EnumCodec(4, {0: "zero", 1: "one"})),
        Member("ports", 40, ArrayCodec(IntCodec(2, big_endian=True), 4)),
        Member("inner", 48, inner),
        Member("byte", 52, IntCodec(1)),
        Member("__pad1", 53, IntCodec(1)),
        Member("big", 56, IntCodec(8, big_endian=True)),
    ], name="every_kind")


def test_the_same_values_as_the_codec():
    c = every_kind()
    fast = fast_decoder(c)
    assert fast != c.decode
    rng = random.Random(7)
    samples = [bytes(64), b"\xff" * 64] + [rng.randbytes(64) for _ in range(500)]
    for data in samples:
        # an enum value it names, or one it does not
        data = data[:36] + rng.choice([0, 1, 7]).to_bytes(4, "little") + data[40:]
        assert fast(data) == c.decode(data)
        assert list(fast(data)) == list(c.decode(data))  # in the same order, for listings
    d = fast(bytes(range(64)))
    assert d["port"] == 0x0C0D and d["addr"] == "16.17.18.19" and d["mac"] == "14:15:16:17:18:19"


def test_layouts_it_cannot_read_keep_the_codec():
    bits = StructCodec(8, [Member("x", 0, IntCodec(4)), Member("f", 4, IntCodec(4), 3, 5)])
    anon = StructCodec(8, [Member("", 0, StructCodec(8, [Member("y", 0, IntCodec(8))]))])
    union = StructCodec(8, [Member("a", 0, IntCodec(8)), Member("b", 0, IntCodec(4))], union=True)
    for c in (bits, anon, union, IntCodec(4), Ipv4Codec()):
        assert fast_decoder(c) == c.decode
