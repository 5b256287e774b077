"""Typed access to the datapath's pinned maps, without a compiler.

Contract: a PinnedMap opens one pinned map by path, takes its key and value layouts from the BTF
that the kernel holds for it (see btf.py) and reads and writes decoded Python values. Per-CPU values
come back as one value per possible CPU; `sum_percpu` folds them for display. Maps without BTF
(devmaps: the kernel allows none there) fall back to plain unsigned integers of their size.
Whole-map reads (items, items_raw, keys_raw, count) of hash maps go BATCH entries per syscall
(BPF_MAP_LOOKUP_BATCH), other map types and kernels without it key by key; either way the caller
may delete or add entries while it iterates without the walk stopping or starting over.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from functools import lru_cache
from typing import Any, Callable, Iterator

from . import bpfsys
from .btf import Btf, Codec, IntCodec, Ipv4Codec, MacCodec, StructCodec
from .errors import BpfError, NotFound


@lru_cache(maxsize=16)
def _btf(btf_id: int) -> Btf:
    return Btf.parse(bpfsys.btf_raw(btf_id))


def _fallback(size: int) -> Codec:
    return IntCodec(size) if size in (1, 2, 4, 8) else _RawCodec(size)


class _RawCodec(Codec):
    def __init__(self, size: int):
        self.size = size

    def decode(self, data: bytes) -> str:
        return bytes(data[: self.size]).hex()

    def encode(self, value: Any) -> bytes:
        return bytes.fromhex(value) if isinstance(value, str) else bytes(value)


_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _mac(b: bytes) -> str:
    return b.hex(":")


def fast_decoder(codec: Codec) -> Callable[[bytes], Any]:
    """A function that decodes what codec.decode decodes, to the same value, with one
    struct.unpack_from per byte order instead of a codec call and a slice per member: a whole
    table is decoded entry by entry, and that, not the syscalls, is most of what reading it
    costs. Structs with bitfields or anonymous members, and anything but a struct, keep
    codec.decode."""
    if type(codec) is not StructCodec or codec.union:
        return codec.decode
    fields: list[tuple[str, str, int, str, Callable[[Any], Any] | None]] = []
    for m in codec.members:
        if m.name.startswith("__pad") or m.name.startswith("pad"):
            continue  # what StructCodec.decode leaves out
        if not m.name or m.bit_size:
            return codec.decode
        c = m.codec
        if type(c) is IntCodec and c.size in _INT_CODES:
            code = _INT_CODES[c.size].lower() if c.signed else _INT_CODES[c.size]
            fields.append((m.name, ">" if c.big_endian else "<", m.offset, code, None))
        elif type(c) is Ipv4Codec:
            fields.append((m.name, "<", m.offset, "4s", socket.inet_ntoa))
        elif type(c) is MacCodec:
            fields.append((m.name, "<", m.offset, "6s", _mac))
        else:  # char arrays, arrays, enums, named nested structs: their own codec, on bytes
            fields.append((m.name, "<", m.offset, f"{c.size}s", c.decode))
    layouts = []
    where: dict[int, tuple[int, int]] = {}  # field -> (layout, index in what it unpacks)
    for order in ("<", ">"):
        fmt, pos = order, 0
        group = sorted((j for j, f in enumerate(fields) if f[1] == order),
                       key=lambda j: fields[j][2])
        for i, j in enumerate(group):
            off, code = fields[j][2], fields[j][3]
            if off < pos:  # overlapping members: not a layout this can read
                return codec.decode
            fmt += (f"{off - pos}x" if off > pos else "") + code
            pos = off + struct.calcsize("<" + code)
            where[j] = (len(layouts), i)
        layouts.append(struct.Struct(fmt))
    if max((s.size for s in layouts), default=0) > codec.size:
        return codec.decode
    plan = [(f[0], *where[j], f[4]) for j, f in enumerate(fields)]
    le, be = layouts

    def decode(data: bytes) -> dict:
        parts = (le.unpack_from(data), be.unpack_from(data))
        return {name: post(parts[g][i]) if post else parts[g][i] for name, g, i, post in plan}

    return decode


def _round8(n: int) -> int:
    return (n + 7) & ~7


# hash, array, percpu_hash, lru_hash, lru_percpu_hash: the types whose whole-map reads go in
# batches (an array's since Linux 5.6; flow_hot's 65,536 slots in 16 calls rather than 131,072)
_BATCH_TYPES = frozenset({1, 2, 5, 9, 10})
BATCH = 4096  # entries per BPF_MAP_LOOKUP_BATCH: ~330 KB of buffers for the flows table


class PinnedMap:
    def __init__(self, path: str):
        self.path = path
        try:
            self.fd = bpfsys.obj_get(path)
        except BpfError as e:
            if e.errno == errno.ENOENT:
                raise NotFound(f"map {path} is not pinned (is the node up?)") from None
            raise
        info = bpfsys.map_info(self.fd)
        self.id = info.id
        self.name = info.name.decode()
        self.type = info.type
        self.type_name = bpfsys.MAP_TYPE_NAMES.get(info.type, str(info.type))
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries
        self.percpu = info.type in bpfsys.PERCPU_MAP_TYPES
        self.ncpus = bpfsys.possible_cpus() if self.percpu else 1
        # what one lookup returns: a value per possible CPU, each rounded up to 8 bytes
        self.value_buf_size = _round8(info.value_size) * self.ncpus if self.percpu \
            else info.value_size
        self._batch = info.type in _BATCH_TYPES  # until the kernel says it has no batch op
        if info.btf_id and info.btf_value_type_id:
            btf = _btf(info.btf_id)
            self.key_codec: Codec = (btf.codec(info.btf_key_type_id) if info.btf_key_type_id
                                     else _fallback(info.key_size))
            self.value_codec: Codec = btf.codec(info.btf_value_type_id)
        else:
            self.key_codec = _fallback(info.key_size)
            self.value_codec = _fallback(info.value_size)
        self.decode_key: Callable[[bytes], Any] = fast_decoder(self.key_codec)
        self._decode_one = fast_decoder(self.value_codec)

    # context manager so callers close fds deterministically
    def __enter__(self) -> "PinnedMap":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def is_array(self) -> bool:
        return self.type_name in ("array", "percpu_array", "devmap", "prog_array")

    @property
    def value_fields(self) -> list[str]:
        return self.value_codec.field_names if isinstance(self.value_codec, StructCodec) else []

    def _key(self, key: Any) -> bytes:
        return bytes(key) if isinstance(key, (bytes, bytearray)) else self.key_codec.encode(key)

    def _value(self, value: Any) -> bytes:
        """Encode a value; raw bytes shorter than the value (b"" to zero a slot) are padded."""
        raw = bytes(value) if isinstance(value, (bytes, bytearray)) else self.value_codec.encode(value)
        if len(raw) > self.value_size:
            raise ValueError(f"{len(raw)}-byte value for {self.name}, whose values are "
                             f"{self.value_size} bytes")
        raw = raw.ljust(self.value_size, b"\0")
        if self.percpu:
            slot = _round8(self.value_size)
            raw = raw.ljust(slot, b"\0") * self.ncpus
        return raw

    def decode_value(self, raw: bytes) -> Any:
        """A value as lookup_raw or items_raw returned it, decoded (a list per CPU if per-CPU)."""
        if not self.percpu:
            return self._decode_one(raw)
        slot = _round8(self.value_size)
        return [self._decode_one(raw[i * slot: i * slot + self.value_size])
                for i in range(self.ncpus)]

    _decode_value = decode_value

    def lookup_raw(self, key: Any) -> bytes | None:
        return bpfsys.map_lookup(self.fd, self._key(key), self.value_buf_size)

    def lookup(self, key: Any) -> Any:
        raw = self.lookup_raw(key)
        return None if raw is None else self.decode_value(raw)

    def update(self, key: Any, value: Any, flags: int = bpfsys.BPF_ANY) -> None:
        bpfsys.map_update(self.fd, self._key(key), self._value(value), flags)

    def delete(self, key: Any) -> bool:
        return bpfsys.map_delete(self.fd, self._key(key))

    def pop(self, key: Any) -> Any:
        """Delete an element and return the value it had as it went (None if it was gone)."""
        raw = bpfsys.map_lookup_and_delete(self.fd, self._key(key), self.value_buf_size)
        return None if raw is None else self.decode_value(raw)

    def items_raw(self, limit: int | None = None, batch: int = BATCH) -> Iterator[tuple[bytes, bytes]]:
        """Every entry as (key, value) bytes: by BPF_MAP_LOOKUP_BATCH for hash maps, else (or
        where the kernel has no batch operation for the type) by the per-key walk. An entry
        may be up to one batch older than the moment it is yielded."""
        if self._batch:
            walk = bpfsys.map_lookup_batch(self.fd, self.key_size, self.value_buf_size, batch,
                                           limit)
            try:
                first = next(walk)
            except StopIteration:
                return
            except BpfError as e:
                if e.errno not in bpfsys.BATCH_UNSUPPORTED:
                    raise
                self._batch = False
            else:
                yield first
                yield from walk
                return
        yield from self._items_walk(limit)

    def _items_walk(self, limit: int | None) -> Iterator[tuple[bytes, bytes]]:
        # the keys are read first: GET_NEXT_KEY from a key deleted meanwhile starts over at
        # the first bucket, which would hand the caller entries twice
        for k in list(bpfsys.map_keys(self.fd, self.key_size, limit)):
            raw = self.lookup_raw(k)
            if raw is None:  # deleted (or evicted) between the two calls
                continue
            yield k, raw

    def keys_raw(self, limit: int | None = None) -> Iterator[bytes]:
        if self._batch:
            return (k for k, _ in self.items_raw(limit))
        return bpfsys.map_keys(self.fd, self.key_size, limit)

    def items(self, limit: int | None = None) -> Iterator[tuple[Any, Any]]:
        decode_key, decode_value = self.decode_key, self.decode_value
        for k, raw in self.items_raw(limit):
            yield decode_key(k), decode_value(raw)

    def count(self) -> int:
        if self.type_name == "ringbuf":  # no keys: records are consumed, never looked up
            return 0
        if self.type_name == "devmap":  # slots exist always; only filled ones look up
            return sum(1 for k in bpfsys.map_keys(self.fd, self.key_size)
                       if self.lookup_raw(k) is not None)
        if self.is_array:
            return self.max_entries
        return sum(1 for _ in self.items_raw())


def sum_percpu(values: Any) -> Any:
    """Fold per-CPU values (a list of equally shaped dicts/ints/lists) into one."""
    if not isinstance(values, list) or not values:
        return values
    first = values[0]
    if isinstance(first, dict):
        return {k: sum_percpu([v[k] for v in values]) for k in first}
    if isinstance(first, list):
        return [sum_percpu([v[i] for v in values]) for i in range(len(first))]
    if isinstance(first, int):
        return sum(values)
    return first
