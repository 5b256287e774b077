"""Thin ctypes wrapper over the bpf(2) syscall.

Contract: everything that is not `eniplane up` talks to the kernel through this module, so that
ordinary commands never import bcc or compile C. Only the commands eniplane needs are wrapped; each
raises BpfError (an EniplaneError) carrying the errno and the object it was about.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import os
import platform
import struct
import sys
from functools import lru_cache

from .errors import BpfError

_NR_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351, "riscv64": 280}

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
BPF_MAP_LOOKUP_BATCH = 24
BPF_PROG_LOAD = 5
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_BTF_GET_FD_BY_ID = 19
BPF_RAW_TRACEPOINT_OPEN = 17
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1

BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_XDP = 6

# Map types whose values are per CPU: lookups return one value slot (rounded to 8 bytes) per
# possible CPU.
PERCPU_MAP_TYPES = {5: "percpu_hash", 6: "percpu_array", 10: "lru_percpu_hash"}
MAP_TYPE_NAMES = {
    1: "hash", 2: "array", 3: "prog_array", 4: "perf_event_array", 5: "percpu_hash",
    6: "percpu_array", 7: "stack_trace", 8: "cgroup_array", 9: "lru_hash", 10: "lru_percpu_hash",
    11: "lpm_trie", 12: "array_of_maps", 13: "hash_of_maps", 14: "devmap", 15: "sockmap",
    16: "cpumap", 17: "xskmap", 25: "devmap_hash", 27: "ringbuf",
}
PROG_TYPE_NAMES = {1: "socket_filter", 3: "sched_cls", 4: "sched_act", 6: "xdp"}


class _MapElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32)]


class _BatchAttr(ctypes.Structure):
    """union bpf_attr's `batch` member (BPF_MAP_*_BATCH)."""
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _ObjAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32)]


class _GetIdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32),
                ("open_flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32)]


class _TestRunAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16),
                ("ifindex", ctypes.c_uint32), ("btf_vmlinux_value_type_id", ctypes.c_uint32),
                ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
                ("btf_id", ctypes.c_uint32), ("btf_key_type_id", ctypes.c_uint32),
                ("btf_value_type_id", ctypes.c_uint32), ("btf_vmlinux_id", ctypes.c_uint32),
                ("map_extra", ctypes.c_uint64)]


class ProgInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
                ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
                ("gpl_compatible", ctypes.c_uint32), ("netns_dev", ctypes.c_uint64),
                ("netns_ino", ctypes.c_uint64), ("nr_jited_ksyms", ctypes.c_uint32),
                ("nr_jited_func_lens", ctypes.c_uint32), ("jited_ksyms", ctypes.c_uint64),
                ("jited_func_lens", ctypes.c_uint64), ("btf_id", ctypes.c_uint32),
                ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
                ("nr_func_info", ctypes.c_uint32), ("nr_line_info", ctypes.c_uint32),
                ("line_info", ctypes.c_uint64), ("jited_line_info", ctypes.c_uint64),
                ("nr_jited_line_info", ctypes.c_uint32), ("line_info_rec_size", ctypes.c_uint32),
                ("jited_line_info_rec_size", ctypes.c_uint32), ("nr_prog_tags", ctypes.c_uint32),
                ("prog_tags", ctypes.c_uint64), ("run_time_ns", ctypes.c_uint64),
                ("run_cnt", ctypes.c_uint64), ("recursion_misses", ctypes.c_uint64),
                ("verified_insns", ctypes.c_uint32)]


class _BtfInfo(ctypes.Structure):
    _fields_ = [("btf", ctypes.c_uint64), ("btf_size", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("name", ctypes.c_uint64), ("name_len", ctypes.c_uint32),
                ("kernel_btf", ctypes.c_uint32)]


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    nr = _NR_BPF.get(platform.machine())
    if nr is None:
        raise BpfError(f"bpf(2) syscall number unknown for {platform.machine()}", what=what)
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), ctypes.byref(attr),
                       ctypes.c_uint(ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(os.strerror(err), what=what, errno=err)
    return int(ret)


def _buf(data: bytes | bytearray | ctypes.Array) -> tuple[ctypes.Array, int]:
    if isinstance(data, ctypes.Array):
        return data, ctypes.addressof(data)
    b = ctypes.create_string_buffer(bytes(data), len(data))
    return b, ctypes.addressof(b)


def obj_get(path: str) -> int:
    p = ctypes.create_string_buffer(path.encode())
    return _bpf(BPF_OBJ_GET, _ObjAttr(pathname=ctypes.addressof(p)), path)


def obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(path.encode())
    _bpf(BPF_OBJ_PIN, _ObjAttr(pathname=ctypes.addressof(p), bpf_fd=fd), path)


def prog_get_fd_by_id(prog_id: int) -> int:
    """An fd of the loaded program with this id (what netlink reports as attached)."""
    return _bpf(BPF_PROG_GET_FD_BY_ID, _GetIdAttr(id=prog_id), f"program id {prog_id}")


class _RawTpAttr(ctypes.Structure):
    """union bpf_attr's `raw_tracepoint` member."""
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("cookie", ctypes.c_uint64)]


def raw_tracepoint_open(prog_fd: int, name: str) -> int:
    """Attach a raw tracepoint program; returns the bpf_link's fd (pin it to keep it)."""
    n = ctypes.create_string_buffer(name.encode())
    return _bpf(BPF_RAW_TRACEPOINT_OPEN, _RawTpAttr(name=ctypes.addressof(n), prog_fd=prog_fd),
                f"raw tracepoint {name}")


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               flags: int = 0) -> int:
    """A new map without BTF, as an fd (the datapath's maps come from bcc at `up`: this is
    for tests of the map readers on every map type)."""
    return _bpf(BPF_MAP_CREATE, _MapCreateAttr(map_type=map_type, key_size=key_size,
                                               value_size=value_size, max_entries=max_entries,
                                               map_flags=flags), "map create")


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    _bpf(BPF_OBJ_GET_INFO_BY_FD,
         _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)), "map info")
    return info


def prog_info(fd: int) -> ProgInfo:
    info = ProgInfo()
    _bpf(BPF_OBJ_GET_INFO_BY_FD,
         _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)),
         "program info")
    return info


def prog_code(fd: int, jited: bool = False) -> bytes:
    """A loaded program's code: its instructions as the verifier left them (8 bytes each), or,
    `jited`, the JIT image the CPU runs."""
    info = prog_info(fd)
    n = info.jited_prog_len if jited else info.xlated_prog_len
    buf = ctypes.create_string_buffer(n)
    ask = (ProgInfo(jited_prog_len=n, jited_prog_insns=ctypes.addressof(buf)) if jited else
           ProgInfo(xlated_prog_len=n, xlated_prog_insns=ctypes.addressof(buf)))
    _bpf(BPF_OBJ_GET_INFO_BY_FD,
         _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(ask), info=ctypes.addressof(ask)),
         "program code")
    return buf.raw[:n]


def prog_jited_lines(fd: int) -> tuple[int, int, int, list[tuple[int, int, int, int]]]:
    """A program's JIT image and its line records: (start address, length, BTF id, [(JIT
    address, file name offset, line text offset, line << 10 | column)]), the offsets into the
    strings of that BTF. Empty records when it was loaded without line information."""
    info = prog_info(fd)
    n = min(info.nr_line_info, info.nr_jited_line_info)
    if not n or not info.nr_jited_ksyms:
        return 0, 0, info.btf_id, []
    rec = info.line_info_rec_size
    lines = ctypes.create_string_buffer(info.nr_line_info * rec)
    jited = (ctypes.c_uint64 * info.nr_jited_line_info)()
    ksyms = (ctypes.c_uint64 * info.nr_jited_ksyms)()
    ask = ProgInfo(nr_line_info=info.nr_line_info, line_info_rec_size=rec,
                   line_info=ctypes.addressof(lines), nr_jited_line_info=info.nr_jited_line_info,
                   jited_line_info_rec_size=8, jited_line_info=ctypes.addressof(jited),
                   nr_jited_ksyms=info.nr_jited_ksyms, jited_ksyms=ctypes.addressof(ksyms))
    _bpf(BPF_OBJ_GET_INFO_BY_FD,
         _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(ask), info=ctypes.addressof(ask)),
         "program line info")
    out = []
    for i in range(n):
        _, file_off, line_off, line_col = struct.unpack_from("<IIII", lines.raw, i * rec)
        out.append((jited[i], file_off, line_off, line_col))
    return ksyms[0], info.jited_prog_len, info.btf_id, out


class _EnableStatsAttr(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32)]


def enable_run_time_stats() -> int:
    """Turn on every program's run_time_ns/run_cnt accounting (kernel.bpf_stats_enabled) for as
    long as the returned fd stays open; closing it, or exiting, turns it off again."""
    return _bpf(BPF_ENABLE_STATS, _EnableStatsAttr(type=BPF_STATS_RUN_TIME), "enable stats")


def btf_raw(btf_id: int) -> bytes:
    """The raw BTF blob (header, types, strings) that the kernel holds under btf_id."""
    fd = _bpf(BPF_BTF_GET_FD_BY_ID, _GetIdAttr(id=btf_id), f"btf id {btf_id}")
    try:
        info = _BtfInfo()
        _bpf(BPF_OBJ_GET_INFO_BY_FD,
             _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)),
             "btf info")
        size = info.btf_size
        buf = ctypes.create_string_buffer(size)
        info = _BtfInfo(btf=ctypes.addressof(buf), btf_size=size)
        _bpf(BPF_OBJ_GET_INFO_BY_FD,
             _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)),
             "btf info")
        return buf.raw[:size]
    finally:
        os.close(fd)


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    kb, ka = _buf(key)
    vb = ctypes.create_string_buffer(value_size)
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, _MapElemAttr(map_fd=fd, key=ka, value=ctypes.addressof(vb)),
             "map lookup")
    except BpfError as e:
        if e.errno == _errno.ENOENT:
            return None
        raise
    return vb.raw


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    kb, ka = _buf(key)
    vb, va = _buf(value)
    _bpf(BPF_MAP_UPDATE_ELEM, _MapElemAttr(map_fd=fd, key=ka, value=va, flags=flags), "map update")


def map_delete(fd: int, key: bytes) -> bool:
    kb, ka = _buf(key)
    try:
        _bpf(BPF_MAP_DELETE_ELEM, _MapElemAttr(map_fd=fd, key=ka), "map delete")
    except BpfError as e:
        if e.errno == _errno.ENOENT:
            return False
        raise
    return True


def map_lookup_and_delete(fd: int, key: bytes, value_size: int) -> bytes | None:
    """Remove an element and return the value it had when it went, in one step (hash maps,
    Linux 5.14+): what was deleted is known exactly, however the datapath changed it since it
    was last read."""
    kb, ka = _buf(key)
    vb = ctypes.create_string_buffer(value_size)
    try:
        _bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM,
             _MapElemAttr(map_fd=fd, key=ka, value=ctypes.addressof(vb)), "map lookup and delete")
    except BpfError as e:
        if e.errno == _errno.ENOENT:
            return None
        raise
    return vb.raw


def map_keys(fd: int, key_size: int, limit: int | None = None):
    """Yield every key; a key deleted while iterating restarts nothing (the kernel moves on)."""
    nb = ctypes.create_string_buffer(key_size)
    cur: ctypes.Array | None = None
    n = 0
    while limit is None or n < limit:
        attr = _MapElemAttr(map_fd=fd, key=ctypes.addressof(cur) if cur is not None else 0,
                            value=ctypes.addressof(nb))
        try:
            _bpf(BPF_MAP_GET_NEXT_KEY, attr, "map iterate")
        except BpfError as e:
            if e.errno == _errno.ENOENT:
                return
            raise
        key = nb.raw
        yield key
        n += 1
        cur = ctypes.create_string_buffer(key, key_size)


# What a kernel answers BPF_MAP_LOOKUP_BATCH with for a map type that has no batch operation
# (ENOTSUPP, 524, is kernel-internal and has no name in errno) or before Linux 5.6 (EINVAL).
BATCH_UNSUPPORTED = frozenset({_errno.EINVAL, _errno.EOPNOTSUPP, 524})


def map_lookup_batch(fd: int, key_size: int, value_size: int, count: int = 4096,
                     limit: int | None = None):
    """Yield every element as (key, value) bytes, read `count` at a time by BPF_MAP_LOOKUP_BATCH
    (hash maps, Linux 5.6+): one syscall per batch instead of two per element. value_size is
    what one element's value takes in the buffer (round_up(value_size, 8) * possible CPUs for
    per-CPU maps). The kernel goes bucket by bucket and hands back whole buckets, so elements
    deleted or added between batches never stop or restart the walk. Raises BpfError with an
    errno in BATCH_UNSUPPORTED, before yielding anything, where the map type has no batch
    operation."""
    token_size = max(key_size, 8)  # hash maps' token is a u32 bucket index, arrays' a key
    tokens = [ctypes.create_string_buffer(token_size), ctypes.create_string_buffer(token_size)]
    kb = ctypes.create_string_buffer(count * key_size)
    vb = ctypes.create_string_buffer(count * value_size)
    first, n = True, 0
    while limit is None or n < limit:
        attr = _BatchAttr(in_batch=0 if first else ctypes.addressof(tokens[0]),
                          out_batch=ctypes.addressof(tokens[1]), keys=ctypes.addressof(kb),
                          values=ctypes.addressof(vb), count=count, map_fd=fd)
        done = False
        try:
            _bpf(BPF_MAP_LOOKUP_BATCH, attr, "map batch lookup")
        except BpfError as e:
            if e.errno == _errno.ENOSPC and attr.count == 0:
                # one bucket holds more than `count` elements: the batch must hold it whole
                count *= 2
                kb = ctypes.create_string_buffer(count * key_size)
                vb = ctypes.create_string_buffer(count * value_size)
                continue
            if e.errno != _errno.ENOENT:  # ENOENT: the end, this last batch still in count
                raise
            done = True
        got = attr.count
        if limit is not None:
            got = min(got, limit - n)
        keys = ctypes.string_at(kb, got * key_size)
        values = ctypes.string_at(vb, got * value_size)
        for i in range(got):
            yield (keys[i * key_size:(i + 1) * key_size],
                   values[i * value_size:(i + 1) * value_size])
        n += got
        if done:
            return
        first = False
        tokens.reverse()  # this batch's out_batch is the next one's in_batch


class XdpMd(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32),
                ("data_meta", ctypes.c_uint32), ("ingress_ifindex", ctypes.c_uint32),
                ("rx_queue_index", ctypes.c_uint32), ("egress_ifindex", ctypes.c_uint32)]


def prog_test_run(fd: int, data: bytes, repeat: int = 1, out_size: int | None = None,
                  flags: int = 0, batch_size: int = 0,
                  ingress_ifindex: int = 0) -> tuple[int, bytes, int]:
    """Run a program on one packet: (return value, output bytes, mean duration in ns).
    ingress_ifindex is resolved in the caller's network namespace."""
    db, da = _buf(data)
    ctx = XdpMd(data=0, data_end=len(data), ingress_ifindex=ingress_ifindex)
    size = out_size if out_size is not None else len(data) + 256
    ob = ctypes.create_string_buffer(max(size, 1))
    attr = _TestRunAttr(prog_fd=fd, data_size_in=len(data), data_in=da,
                        data_size_out=size if size else 0, data_out=ctypes.addressof(ob) if size else 0,
                        repeat=repeat, flags=flags, batch_size=batch_size)
    if ingress_ifindex:
        attr.ctx_in = ctypes.addressof(ctx)
        attr.ctx_size_in = ctypes.sizeof(ctx)
    _bpf(BPF_PROG_TEST_RUN, attr, "test run")
    return attr.retval, ob.raw[: attr.data_size_out] if size else b"", attr.duration


def possible_cpus() -> int:
    """Number of possible CPUs, which sizes per-CPU map values (not the online count)."""
    try:
        text = open("/sys/devices/system/cpu/possible").read().strip()
    except OSError:
        return os.cpu_count() or 1
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) - int(lo) + 1) if hi else 1
    return n


def load_xdp_pass() -> int:
    """A two-instruction XDP program that passes every frame. The lab attaches it to veth peers
    that receive redirected frames: a veth only takes XDP frames when its peer runs XDP (NAPI)."""
    insns = bytes([0xB7, 0, 0, 0, 2, 0, 0, 0,  # r0 = XDP_PASS
                   0x95, 0, 0, 0, 0, 0, 0, 0])  # exit
    ib, ia = _buf(insns)
    lic = ctypes.create_string_buffer(b"GPL")
    return _bpf(BPF_PROG_LOAD, _ProgLoadAttr(prog_type=BPF_PROG_TYPE_XDP, insn_cnt=2, insns=ia,
                                             license=ctypes.addressof(lic)), "xdp pass program")


def prog_load_log(prog_type: int, insns: bytes, log_size: int = 16 << 20) -> str:
    """Load `insns` once more with the verifier's log on, and return the log's tail (whatever
    the verdict; a program that loads is closed at once). For loads whose refusal came without
    the log: bcc asks for none when the kernel answers E2BIG."""
    ib, ia = _buf(insns)
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(log_size)
    attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8, insns=ia,
                         license=ctypes.addressof(lic), log_level=1, log_size=log_size,
                         log_buf=ctypes.addressof(log))
    try:
        os.close(_bpf(BPF_PROG_LOAD, attr, "program load with the verifier's log"))
    except BpfError:
        pass
    return log.value.decode(errors="replace")


def probe() -> None:
    """Load a two-instruction socket filter: proves this process may load BPF at all."""
    insns = bytes([0xB7, 0, 0, 0, 0, 0, 0, 0,  # r0 = 0
                   0x95, 0, 0, 0, 0, 0, 0, 0])  # exit
    ib, ia = _buf(insns)
    lic = ctypes.create_string_buffer(b"GPL")
    fd = _bpf(BPF_PROG_LOAD, _ProgLoadAttr(prog_type=BPF_PROG_TYPE_SOCKET_FILTER, insn_cnt=2,
                                           insns=ia, license=ctypes.addressof(lic)),
              "probe program")
    os.close(fd)


if __name__ == "__main__":
    if sys.argv[1:] == ["--probe"]:
        try:
            probe()
        except BpfError as e:
            print(f"bpf probe failed: {e}", file=sys.stderr)
            sys.exit(1)
        sys.exit(0)
    print("usage: python -m eniplane.bpfsys --probe", file=sys.stderr)
    sys.exit(2)
