"""Typed access to the datapath's pinned maps, without a compiler.

Contract: a PinnedMap opens one pinned map by path, takes its key and value layouts from the BTF
that the kernel holds for it (see btf.py) and reads and writes decoded Python values. Per-CPU values
come back as one value per possible CPU; `sum_percpu` folds them for display. Maps without BTF
(devmaps: the kernel allows none there) fall back to plain unsigned integers of their size.
"""

from __future__ import annotations

import errno
import os
from functools import lru_cache
from typing import Any, Iterator

from . import bpfsys
from .btf import Btf, Codec, IntCodec, StructCodec
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


def _round8(n: int) -> int:
    return (n + 7) & ~7


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
        if info.btf_id and info.btf_value_type_id:
            btf = _btf(info.btf_id)
            self.key_codec: Codec = (btf.codec(info.btf_key_type_id) if info.btf_key_type_id
                                     else _fallback(info.key_size))
            self.value_codec: Codec = btf.codec(info.btf_value_type_id)
        else:
            self.key_codec = _fallback(info.key_size)
            self.value_codec = _fallback(info.value_size)

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

    def _decode_value(self, raw: bytes) -> Any:
        if not self.percpu:
            return self.value_codec.decode(raw)
        slot = _round8(self.value_size)
        return [self.value_codec.decode(raw[i * slot: i * slot + self.value_size])
                for i in range(self.ncpus)]

    def lookup_raw(self, key: Any) -> bytes | None:
        size = _round8(self.value_size) * self.ncpus if self.percpu else self.value_size
        return bpfsys.map_lookup(self.fd, self._key(key), size)

    def lookup(self, key: Any) -> Any:
        raw = self.lookup_raw(key)
        return None if raw is None else self._decode_value(raw)

    def update(self, key: Any, value: Any, flags: int = bpfsys.BPF_ANY) -> None:
        bpfsys.map_update(self.fd, self._key(key), self._value(value), flags)

    def delete(self, key: Any) -> bool:
        return bpfsys.map_delete(self.fd, self._key(key))

    def pop(self, key: Any) -> Any:
        """Delete an element and return the value it had as it went (None if it was gone)."""
        raw = bpfsys.map_lookup_and_delete(self.fd, self._key(key), self.value_size)
        return None if raw is None else self._decode_value(raw)

    def keys_raw(self, limit: int | None = None) -> Iterator[bytes]:
        return bpfsys.map_keys(self.fd, self.key_size, limit)

    def items(self, limit: int | None = None) -> Iterator[tuple[Any, Any]]:
        for k in self.keys_raw(limit):
            raw = self.lookup_raw(k)
            if raw is None:  # deleted (or evicted) between the two calls
                continue
            yield self.key_codec.decode(k), self._decode_value(raw)

    def count(self) -> int:
        if self.type_name == "devmap":  # slots exist always; only filled ones look up
            return sum(1 for k in self.keys_raw() if self.lookup_raw(k) is not None)
        if self.is_array:
            return self.max_entries
        return sum(1 for _ in self.keys_raw())


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
