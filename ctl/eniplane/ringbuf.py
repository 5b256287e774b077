"""A consumer of a BPF ring buffer (BPF_MAP_TYPE_RINGBUF), by mmap, without a compiler.

Contract: `RingBuffer(fd)` maps the buffer as the kernel lays it out (kernel/bpf/ringbuf.c): one
writable page holding the consumer position, then, read-only, a page holding the producer
position followed by the data area mapped twice (so a record never wraps). Records start with an
8-byte header: length with a BUSY bit (not yet committed) and a DISCARD bit, then the page
offset; each takes its length plus the header, rounded up to 8. `drain()` returns the committed
records since the last call and releases their space; `wait(timeout)` sleeps in epoll until
the kernel says there is data. One consumer per buffer: two would hand records to either. The
RingBuffer owns the fd it is given (epoll watches it) and closes it.
"""

from __future__ import annotations

import mmap
import os
import select
import struct

from . import bpfsys

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SZ = 8


class RingBuffer:
    def __init__(self, fd: int):
        self.fd = fd
        self.size = bpfsys.map_info(fd).max_entries
        if self.size & (self.size - 1):
            raise ValueError(f"ring buffer size {self.size} is not a power of two")
        page = mmap.PAGESIZE
        self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._prod = mmap.mmap(fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ,
                               offset=page)
        self._data = page
        self._ep = select.epoll()
        self._ep.register(fd, select.EPOLLIN)

    def close(self) -> None:
        self._ep.close()
        self._prod.close()
        self._cons.close()
        os.close(self.fd)

    def __enter__(self) -> "RingBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drain(self, limit: int | None = None) -> list[bytes]:
        """Committed records, oldest first (at most `limit`); their space goes back."""
        out: list[bytes] = []
        cons = struct.unpack_from("<Q", self._cons, 0)[0]
        prod = struct.unpack_from("<Q", self._prod, 0)[0]
        mask = self.size - 1
        while cons < prod and (limit is None or len(out) < limit):
            at = self._data + (cons & mask)
            hdr = struct.unpack_from("<I", self._prod, at)[0]
            if hdr & BUSY_BIT:
                break  # reserved, not yet submitted: later records wait for it
            length = hdr & ~(BUSY_BIT | DISCARD_BIT)
            if not hdr & DISCARD_BIT:
                out.append(bytes(self._prod[at + HDR_SZ: at + HDR_SZ + length]))
            cons += (length + HDR_SZ + 7) & ~7
            struct.pack_into("<Q", self._cons, 0, cons)
        return out

    def pending(self) -> int:
        """Bytes the producer wrote that the consumer has not released."""
        return struct.unpack_from("<Q", self._prod, 0)[0] - struct.unpack_from("<Q", self._cons, 0)[0]

    def wait(self, timeout: float) -> bool:
        """Sleep until the kernel signals data (or `timeout` seconds); True when it did."""
        if self.pending():
            return True
        return bool(self._ep.poll(timeout))


def open_pinned(path: str) -> RingBuffer:
    fd = bpfsys.obj_get(path)
    try:
        return RingBuffer(fd)
    except BaseException:
        os.close(fd)
        raise
