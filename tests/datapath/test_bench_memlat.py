"""bench.memlat's chase on the kernel: each run follows its links one after the other through
the map that user space wrote (mmap'd), around one cycle over every line it covers. No timing
is asserted, only that what is timed is the chase the tool says it is."""

from __future__ import annotations

from bench import memlat


def test_the_chase_follows_one_cycle_through_every_line():
    ch = memlat.Chase(0.25)
    try:
        n = ch.link(0.125)
        assert n == 0.125 * (1 << 20) // memlat.LINE
        words = ch._words
        seen, i = set(), ch.first
        for _ in range(n):
            seen.add(i)
            i = words[i * (memlat.LINE // 4)]
        assert (len(seen), i, max(seen)) == (n, ch.first, n - 1)  # one cycle, the first n lines
        ch.follow(3 * memlat.STEPS)  # three runs of the program
        want = ch.first
        for _ in range(3 * memlat.STEPS):
            want = words[want * (memlat.LINE // 4)]
        assert ch.cursor() == want != ch.first
        assert 0 < ch.ns_per_load(0.125) < 10_000
    finally:
        ch.close()
