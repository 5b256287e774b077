"""Decode BTF into codecs for map keys and values.

Contract: the C structs in bpf/ are the one source of truth for every layout. bcc attaches their BTF
to each map; this module reads that BTF back (raw bytes from the kernel) and builds a Codec per
type that turns key/value bytes into plain Python values and back. Byte order and presentation
come from the C typedef names: `__be16`/`__be32` are network order, `ipv4_t` prints as a dotted
address, `mac_t` as aa:bb:cc:dd:ee:ff. Nothing here knows a field name of the datapath.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any

BTF_MAGIC = 0xEB9F

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD, KIND_TYPEDEF = range(1, 9)
KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR = range(9, 15)
KIND_DATASEC, KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = range(15, 20)

INT_SIGNED = 1 << 0


class BtfFormatError(ValueError):
    pass


@dataclass
class BtfType:
    kind: int
    name: str
    size_or_type: int
    vlen: int
    kind_flag: bool
    extra: Any = None


@dataclass
class Btf:
    types: list[BtfType]  # index = type id; id 0 is void

    @classmethod
    def parse(cls, raw: bytes) -> "Btf":
        if len(raw) < 24:
            raise BtfFormatError("BTF blob shorter than its header")
        magic, version, flags, hdr_len = struct.unpack_from("<HBBI", raw, 0)
        if magic != BTF_MAGIC:
            raise BtfFormatError(f"bad BTF magic {magic:#x}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", raw, 8)
        tbase = hdr_len + type_off
        sbase = hdr_len + str_off
        strings = raw[sbase: sbase + str_len]

        def name(off: int) -> str:
            end = strings.index(b"\0", off)
            return strings[off:end].decode()

        types: list[BtfType] = [BtfType(0, "void", 0, 0, False)]
        pos, end = tbase, tbase + type_len
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from("<III", raw, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kflag = bool(info >> 31)
            extra: Any = None
            if kind == KIND_INT:
                (extra,) = struct.unpack_from("<I", raw, pos)
                pos += 4
            elif kind == KIND_ARRAY:
                extra = struct.unpack_from("<III", raw, pos)  # elem type, index type, nelems
                pos += 12
            elif kind in (KIND_STRUCT, KIND_UNION):
                extra = []
                for _ in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", raw, pos)
                    pos += 12
                    bitsize = m_off >> 24 if kflag else 0
                    bitoff = m_off & 0xFFFFFF if kflag else m_off
                    extra.append((name(m_name), m_type, bitoff, bitsize))
            elif kind == KIND_ENUM:
                extra = []
                for _ in range(vlen):
                    e_name, e_val = struct.unpack_from("<Ii", raw, pos)
                    pos += 8
                    extra.append((name(e_name), e_val))
            elif kind == KIND_ENUM64:
                extra = []
                for _ in range(vlen):
                    e_name, lo, hi = struct.unpack_from("<III", raw, pos)
                    pos += 12
                    extra.append((name(e_name), lo | (hi << 32)))
            elif kind == KIND_FUNC_PROTO:
                pos += 8 * vlen
            elif kind == KIND_VAR or kind == KIND_DECL_TAG:
                pos += 4
            elif kind == KIND_DATASEC:
                pos += 12 * vlen
            elif kind in (KIND_PTR, KIND_FWD, KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST,
                          KIND_RESTRICT, KIND_FUNC, KIND_FLOAT, KIND_TYPE_TAG):
                pass
            else:
                raise BtfFormatError(f"unknown BTF kind {kind}")
            types.append(BtfType(kind, name(name_off), size_or_type, vlen, kflag, extra))
        return cls(types)

    def codec(self, type_id: int) -> "Codec":
        return _build(self, type_id, hint="")

    def find(self, kind: int, name: str) -> int | None:
        for i, t in enumerate(self.types):
            if t.kind == kind and t.name == name:
                return i
        return None


# ---- codecs ------------------------------------------------------------------------------------


class Codec:
    size: int
    name: str = ""

    def decode(self, data: bytes) -> Any:
        raise NotImplementedError

    def encode(self, value: Any) -> bytes:
        raise NotImplementedError


@dataclass
class IntCodec(Codec):
    size: int
    signed: bool = False
    big_endian: bool = False
    name: str = ""

    def decode(self, data: bytes) -> int:
        return int.from_bytes(data[: self.size], "big" if self.big_endian else "little",
                              signed=self.signed)

    def encode(self, value: Any) -> bytes:
        return int(value).to_bytes(self.size, "big" if self.big_endian else "little",
                                   signed=self.signed)


@dataclass
class Ipv4Codec(Codec):
    """`ipv4_t`: a __be32 that people read as a dotted address."""

    size: int = 4
    name: str = "ipv4_t"

    def decode(self, data: bytes) -> str:
        return str(ipaddress.IPv4Address(bytes(data[:4])))

    def encode(self, value: Any) -> bytes:
        if isinstance(value, int):
            return value.to_bytes(4, "big")
        return ipaddress.IPv4Address(str(value)).packed


@dataclass
class MacCodec(Codec):
    size: int = 6
    name: str = "mac_t"

    def decode(self, data: bytes) -> str:
        return ":".join(f"{b:02x}" for b in data[:6])

    def encode(self, value: Any) -> bytes:
        if isinstance(value, (bytes, bytearray)):
            return bytes(value[:6]).ljust(6, b"\0")
        parts = str(value).split(":")
        if len(parts) != 6:
            raise ValueError(f"bad MAC address {value!r}")
        return bytes(int(p, 16) for p in parts)


@dataclass
class CharArrayCodec(Codec):
    size: int
    name: str = ""

    def decode(self, data: bytes) -> str:
        return bytes(data[: self.size]).split(b"\0", 1)[0].decode(errors="replace")

    def encode(self, value: Any) -> bytes:
        return str(value).encode()[: self.size].ljust(self.size, b"\0")


@dataclass
class ArrayCodec(Codec):
    elem: Codec
    count: int
    size: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        self.size = self.elem.size * self.count

    def decode(self, data: bytes) -> list:
        es = self.elem.size
        return [self.elem.decode(data[i * es:(i + 1) * es]) for i in range(self.count)]

    def encode(self, value: Any) -> bytes:
        items = list(value or [])
        if len(items) > self.count:
            raise ValueError(f"{len(items)} items do not fit an array of {self.count}")
        out = b"".join(self.elem.encode(v) for v in items)
        return out.ljust(self.size, b"\0")


@dataclass
class Member:
    name: str
    offset: int  # bytes
    codec: Codec
    bit_offset: int = 0
    bit_size: int = 0


@dataclass
class StructCodec(Codec):
    """Structs and unions. Unions decode every member; encoding takes the first one given."""

    size: int
    members: list[Member] = field(default_factory=list)
    name: str = ""
    union: bool = False

    @property
    def field_names(self) -> list[str]:
        return [m.name for m in self.members]

    def decode(self, data: bytes) -> dict:
        out: dict[str, Any] = {}
        for m in self.members:
            if m.name.startswith("__pad") or m.name.startswith("pad"):
                continue
            if m.bit_size:
                word = int.from_bytes(data[m.offset: m.offset + 8].ljust(8, b"\0"), "little")
                out[m.name] = (word >> m.bit_offset) & ((1 << m.bit_size) - 1)
                continue
            v = m.codec.decode(data[m.offset: m.offset + m.codec.size])
            if not m.name and isinstance(v, dict):
                out.update(v)  # anonymous struct/union: its members belong to the parent
            else:
                out[m.name] = v
        return out

    def encode(self, value: dict | None) -> bytes:
        value = dict(value or {})
        buf = bytearray(self.size)
        known = set()
        for m in self.members:
            if not m.name:
                sub = m.codec
                if isinstance(sub, StructCodec):
                    names = set(sub.field_names)
                    part = {k: v for k, v in value.items() if k in names}
                    known |= names
                    if part or not sub.union:
                        buf[m.offset: m.offset + sub.size] = sub.encode(part)
                continue
            known.add(m.name)
            if m.name not in value:
                continue
            if m.bit_size:
                raise ValueError(f"bitfield {m.name} cannot be written")
            buf[m.offset: m.offset + m.codec.size] = m.codec.encode(value[m.name])
            if self.union:
                break
        unknown = set(value) - known
        if unknown:
            raise ValueError(f"{self.name or 'struct'} has no field {sorted(unknown)[0]!r}")
        return bytes(buf)


@dataclass
class EnumCodec(Codec):
    size: int
    values: dict[int, str]
    name: str = ""

    def decode(self, data: bytes) -> str | int:
        v = int.from_bytes(data[: self.size], "little", signed=False)
        return self.values.get(v, v)

    def encode(self, value: Any) -> bytes:
        if isinstance(value, str):
            rev = {n: v for v, n in self.values.items()}
            value = rev[value]
        return int(value).to_bytes(self.size, "little")


_SPECIAL_TYPEDEFS = {"ipv4_t": Ipv4Codec, "mac_t": MacCodec}


def _build(btf: Btf, tid: int, hint: str) -> Codec:
    t = btf.types[tid]
    if t.kind == KIND_TYPEDEF:
        if t.name in _SPECIAL_TYPEDEFS:
            return _SPECIAL_TYPEDEFS[t.name]()
        inner = _build(btf, t.size_or_type, hint=t.name)
        if isinstance(inner, IntCodec) and t.name.startswith("__be"):
            return IntCodec(inner.size, inner.signed, big_endian=True, name=t.name)
        return inner
    if t.kind in (KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG):
        return _build(btf, t.size_or_type, hint)
    if t.kind == KIND_INT:
        return IntCodec(t.size_or_type, bool((t.extra >> 24) & INT_SIGNED), name=t.name)
    if t.kind == KIND_ENUM or t.kind == KIND_ENUM64:
        return EnumCodec(t.size_or_type, {v: n for n, v in t.extra}, name=t.name)
    if t.kind == KIND_ARRAY:
        elem_id, _, n = t.extra
        elem = _build(btf, elem_id, hint="")
        if isinstance(elem, IntCodec) and elem.size == 1 and elem.name == "char":
            return CharArrayCodec(n)
        return ArrayCodec(elem, n)
    if t.kind in (KIND_STRUCT, KIND_UNION):
        members = []
        for m_name, m_type, bitoff, bitsize in t.extra:
            codec = _build(btf, m_type, hint="")
            if bitsize == 0 and bitoff % 8:
                bitsize = codec.size * 8
            members.append(Member(m_name, bitoff // 8 if not bitsize else (bitoff // 64) * 8,
                                  codec, bitoff % 64 if bitsize else 0, bitsize))
        return StructCodec(t.size_or_type, members, name=t.name, union=t.kind == KIND_UNION)
    raise BtfFormatError(f"BTF type {tid} of kind {t.kind} ({t.name or hint}) cannot be a map field")
