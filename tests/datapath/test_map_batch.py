"""Whole-map reads in batches (BPF_MAP_LOOKUP_BATCH): the same entries as the per-key walk, for
every hash map type, per-CPU values included, over more entries than one batch; deleting and
adding while reading neither stops nor restarts the walk; map types without a batch operation
fall back; and the fast decoder reads the datapath's own maps as their codecs do."""

from __future__ import annotations

import os
import random
import struct
import uuid

import pytest

from eniplane import bpfsys, paths
from eniplane.maps import BATCH, PinnedMap

N = 10_000  # more than two batches of BATCH, and not a multiple of one
HASH, PERCPU_HASH, LRU_HASH, LRU_PERCPU_HASH, PERCPU_ARRAY, DEVMAP = 1, 5, 9, 10, 6, 14
VALUE_SIZE = 12  # not a multiple of 8: per-CPU slots are rounded up to 16 bytes


@pytest.fixture
def pinned():
    """Create, pin and open maps; unpin and close them afterwards."""
    made: list[tuple[str, int, PinnedMap]] = []

    def make(map_type: int, key_size: int, value_size: int, max_entries: int) -> PinnedMap:
        fd = bpfsys.map_create(map_type, key_size, value_size, max_entries)
        path = f"{paths.BPFFS}/eniplane-test-batch-{uuid.uuid4().hex[:12]}"
        bpfsys.obj_pin(fd, path)
        m = PinnedMap(path)
        made.append((path, fd, m))
        return m

    yield make
    for path, fd, m in made:
        m.close()
        os.close(fd)
        os.unlink(path)


def percpu_value(m: PinnedMap, i: int) -> bytes:
    """A value whose every CPU's slot differs, so that slots read out of place show."""
    slot = (VALUE_SIZE + 7) // 8 * 8
    return b"".join(struct.pack("<IQ", i, cpu).ljust(slot, b"\0") for cpu in range(m.ncpus))


def fill(m: PinnedMap, n: int) -> dict[bytes, bytes]:
    want = {}
    for i in range(n):
        k = struct.pack("<Q", i * 2654435761 % (1 << 64))
        v = percpu_value(m, i) if m.percpu else struct.pack("<IQ", i, ~i & (1 << 64) - 1)
        bpfsys.map_update(m.fd, k, v)
        want[k] = v
    return want


class CountingBpf:
    """bpfsys._bpf, counting the syscalls by command."""

    def __init__(self, monkeypatch):
        self.calls: dict[int, int] = {}
        real = bpfsys._bpf

        def counted(cmd, attr, what):
            self.calls[cmd] = self.calls.get(cmd, 0) + 1
            return real(cmd, attr, what)

        monkeypatch.setattr(bpfsys, "_bpf", counted)


@pytest.mark.parametrize("map_type", [HASH, PERCPU_HASH, LRU_HASH, LRU_PERCPU_HASH],
                         ids=["hash", "percpu_hash", "lru_hash", "lru_percpu_hash"])
def test_batches_read_what_the_per_key_walk_reads(pinned, monkeypatch, map_type):
    m = pinned(map_type, 8, VALUE_SIZE, 2 * N)
    want = fill(m, N)
    calls = CountingBpf(monkeypatch)
    got = list(m.items_raw())
    # one syscall per batch, not two per entry
    assert sum(calls.calls.values()) == calls.calls[bpfsys.BPF_MAP_LOOKUP_BATCH] <= N // BATCH + 2
    assert len(got) == N and dict(got) == want
    assert dict(got) == dict(m._items_walk(None))
    assert sorted(m.keys_raw()) == sorted(want) and m.count() == N
    assert len(list(m.items_raw(limit=N - 7))) == N - 7
    k, v = next(iter(want.items()))
    decoded = dict(m.items())[int.from_bytes(k, "little")]
    if m.percpu:  # one value per possible CPU, each from its own slot (no BTF: hex)
        assert decoded == [v[c * 16:c * 16 + VALUE_SIZE].hex() for c in range(m.ncpus)]
        assert len(set(decoded)) == m.ncpus
    else:
        assert decoded == v.hex()


def test_a_batch_smaller_than_a_bucket_grows(pinned):
    """The kernel hands back whole buckets only, and ENOSPC when the first does not fit."""
    m = pinned(HASH, 8, VALUE_SIZE, 1 << 16)
    want = fill(m, 3000)
    assert dict(m.items_raw(batch=1)) == want


@pytest.mark.parametrize("map_type", [HASH, LRU_HASH, LRU_PERCPU_HASH],
                         ids=["hash", "lru_hash", "lru_percpu_hash"])
def test_deleting_and_adding_while_reading(pinned, map_type):
    """What a sweep does: delete each entry as it is read, put some back, and the datapath
    deletes and adds others meanwhile. Each entry comes at most once, and every entry that
    stayed in the table throughout comes."""
    m = pinned(map_type, 8, VALUE_SIZE, 4 * N)
    want = fill(m, N)
    rng = random.Random(13)
    order = list(want)
    rng.shuffle(order)
    others_gone: set[bytes] = set()
    seen: list[bytes] = []
    for i, (k, _) in enumerate(m.items_raw(batch=1000)):
        seen.append(k)
        # (an entry read in this batch may be gone already: someone else deleted it below)
        if i % 3:
            assert bpfsys.map_delete(m.fd, k) or k in others_gone
        elif i % 2:  # gone and back, as a sweep that finds the entry live again puts it back
            raw = bpfsys.map_lookup_and_delete(m.fd, k, m.value_buf_size)
            if raw is not None:
                bpfsys.map_update(m.fd, k, raw, bpfsys.BPF_NOEXIST)
        if i % 50 == 0:  # someone else deletes an entry not yet read, and adds a new one
            other = order.pop()
            if other not in seen and bpfsys.map_delete(m.fd, other):
                others_gone.add(other)
            bpfsys.map_update(m.fd, struct.pack("<Q", (1 << 63) + i), m._value(b""))
    assert len(seen) == len(set(seen))
    assert set(want) - others_gone <= set(seen)


def test_a_type_without_batches_falls_back_to_the_walk(pinned):
    """A devmap has no batch operation (ENOTSUPP): the first batch is refused before anything
    was read, and the walk reads the map instead, from then on."""
    m = pinned(DEVMAP, 4, 4, 8)
    want = {struct.pack("<I", slot): struct.pack("<I", 1) for slot in (2, 5)}  # lo
    for k, v in want.items():
        bpfsys.map_update(m.fd, k, v)
    m._batch = True  # as if it were a type that batches
    assert dict(m.items_raw()) == want
    assert m._batch is False
    assert dict(m.items()) == {2: 1, 5: 1}


def test_arrays_are_read_by_the_walk(pinned):
    m = pinned(PERCPU_ARRAY, 4, VALUE_SIZE, 5)
    assert not m._batch
    got = dict(m.items())
    assert sorted(got) == list(range(5)) and all(len(v) == m.ncpus for v in got.values())


def test_the_fast_decoder_reads_the_datapath_maps_as_their_codecs_do(env):
    rng = random.Random(95)
    names = sorted(os.listdir(paths.maps_dir(env.dp.node)))
    assert "flows" in names
    for name in names:
        m = env.dp.map(name)
        for _ in range(200):
            k, v = rng.randbytes(m.key_size), rng.randbytes(m.value_size)
            assert m.decode_key(k) == m.key_codec.decode(k), name
            assert m._decode_one(v) == m.value_codec.decode(v), name
