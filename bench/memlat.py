"""What one dependent load into a BPF map costs, by how much memory the loads cover.

Contract: `python -m bench.memlat [--mib 0.0625,1,2,4,6,8,12,16,32,64] [--rounds 3] [--json F]`
loads bench/memlat.c, and for each size links that many MiB of its map's 64-byte lines into
one cycle in a random order, follows it with BPF_PROG_TEST_RUN on CPU 0 (a warm-up pass over
the whole cycle first, then at least 400,000 loads timed), and prints the ns per load: medians
(min-max) over rounds whose order rotates. A flow table's lookup is such a load, so the curve
says what a larger table costs per packet once a flow's line has left the caches, and where
this machine's share of the last-level cache ends (docs/operations.md, "What a larger table
costs per packet"). Run it beside a benchmark to know which phase of a shared host the
benchmark's numbers came from. No packet leaves the process; `make bench` does not run it.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import random
import statistics
import sys
from pathlib import Path

from eniplane import bpfsys

from . import report
from .gen import pin_cpu0

MEMLAT_C = Path(__file__).with_name("memlat.c")
LINE = 64
STEPS = 64  # links a run of memlat.c follows (given to it as -DSTEPS)
MIN_LOADS = 400_000
DEFAULT_MIB = (0.0625, 1, 2, 4, 6, 8, 12, 16, 32, 64)


class Chase:
    """memlat.c loaded with room for `max_mib` MiB of lines; `ns_per_load(mib)` times one size."""

    def __init__(self, max_mib: float, seed: int = 64):
        from bcc import BPF  # only the tool that times loads compiles

        self.lines = int(max_mib * (1 << 20)) // LINE
        self.bpf = BPF(src_file=str(MEMLAT_C).encode(), cflags=[f"-DLINES={self.lines}", f"-DSTEPS={STEPS}"])
        self.fd = self.bpf.load_func(b"chase_xdp", BPF.XDP).fd
        self._mm = mmap.mmap(self.bpf[b"chase"].map_fd, self.lines * LINE, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self._words = memoryview(self._mm).cast("I")
        self._rng = random.Random(seed)
        self.first = 0

    def link(self, mib: float) -> int:
        """One cycle through the first `mib` MiB of lines, in a random order; its length."""
        n = max(2, min(self.lines, int(mib * (1 << 20)) // LINE))
        order = list(range(n))
        self._rng.shuffle(order)
        w = self._words
        for a, b in zip(order, order[1:] + order[:1]):
            w[a * (LINE // 4)] = b
        self.first = order[0]
        self.bpf[b"cursor"][ctypes.c_uint32(0)] = ctypes.c_uint32(self.first)
        return n

    def cursor(self) -> int:
        return self.bpf[b"cursor"][ctypes.c_uint32(0)].value

    def follow(self, loads: int) -> float:
        """Follow about `loads` links from the cursor; the mean ns per load."""
        runs = max(1, loads // STEPS)
        rc, _, ns = bpfsys.prog_test_run(self.fd, bytes(64), repeat=runs, out_size=0)
        if rc != 1:  # XDP_DROP; a lookup outside the map would have aborted (0)
            raise RuntimeError(f"chase_xdp returned {rc}")
        return ns / STEPS

    def ns_per_load(self, mib: float) -> float:
        n = self.link(mib)
        self.follow(n)  # warm-up: every line of the cycle once
        return self.follow(max(MIN_LOADS, 2 * n))

    def close(self) -> None:
        self._words.release()
        self._mm.close()
        self.bpf.cleanup()


def run(mibs: list[float], rounds: int, progress=print) -> dict:
    pin_cpu0()
    res: dict = {str(m): [] for m in mibs}
    ch = Chase(max(mibs))
    try:
        for r in range(rounds):
            order = mibs[r % len(mibs):] + mibs[:r % len(mibs)]
            for m in order:
                res[str(m)].append(ch.ns_per_load(m))
            progress(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{m} MiB {res[str(m)][-1]:.1f}" for m in mibs))
    finally:
        ch.close()
    return res


def _mib(m: str) -> str:
    v = float(m)
    return f"{v * 1024:g} KiB" if v < 1 else f"{v:g} MiB"


def table(res: dict) -> str:
    lines = ["| loads cover | ns per dependent load |", "|---|---|"]
    for m, xs in res.items():
        lines.append(f"| {_mib(m)} | {statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memlat", description=__doc__)
    ap.add_argument("--mib", default=",".join(f"{m:g}" for m in DEFAULT_MIB),
                    help="sizes in MiB, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    res = run([float(x) for x in a.mib.split(",")], a.rounds, report.progress)
    return report.finish(table(res), res, a.json)


if __name__ == "__main__":
    sys.exit(main())
