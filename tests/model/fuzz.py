"""Long differential fuzzing (`make fuzz`): millions of packets through the kernel and the model.

Contract: runs sequences of random length from seeded generators until --packets packets were
sent (or --seconds passed), with steps of the node's clock between them, checking the invariants
after every sequence. A disagreement on a packet during which the machine stalled long enough to
blur a timeout is counted as inconclusive, not kept. A disagreement is kept
as a regression case in tests/datapath/fuzz_regressions/ (the whole sequence, replayed by
tests/datapath/test_fuzz_regressions.py in every `make test`) and fuzzing goes on with the next
seed. Prints how many packets and sequences were tried and how many disagreed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
REGRESSIONS = HERE.parent / "datapath" / "fuzz_regressions"


def save_case(seq: list[tuple[str, bytes | dict, int]], vpc_of_ifindex: dict[int, int], why: str,
              secret: int, mss_clamp: bool = True) -> Path:
    REGRESSIONS.mkdir(parents=True, exist_ok=True)
    rows = [{"direction": d, "time": f} if d == "time" else
            {"direction": d, "frame": f.hex(), "vpc": vpc_of_ifindex.get(i)} for d, f, i in seq]
    h = hashlib.sha1(json.dumps(rows).encode()).hexdigest()[:12]
    p = REGRESSIONS / f"case-{h}.json"
    p.write_text(json.dumps({"found_by": "make fuzz", "disagreement": why.splitlines()[0],
                             "secret": secret, "mss_clamp": mss_clamp, "packets": rows},
                            indent=1) + "\n")
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=3600)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--max-seq", type=int, default=200)
    ap.add_argument("--fenced", action="store_true",
                    help="build the datapath with a fence at every ordering point (bpf/order.h), "
                         "as a CPU that reorders (arm64) gets it")
    a = ap.parse_args(argv)
    from eniplane.signals import exit_on_sigterm

    exit_on_sigterm()  # a killed run still removes its namespaces and pins

    from eniplane import loader, paths
    from eniplane.lab import Lab
    from harness import DEFINES, Disagreement, Harness, Inconclusive

    import packets as P

    lab = Lab.create(servers=False)
    node = f"{lab.prefix}-fuzz"
    try:
        defines = {**DEFINES, **({"ENIPLANE_WEAK_ORDER": 1} if a.fenced else {})}
        for fd in loader.compile_and_pin(node, defines).values():
            os.close(fd)
        h = Harness(lab, node)
        vpc_of = {v["ifindex"]: idx for idx, v in h.vpc_ifs.items()}
        rng = random.Random(a.seed)
        sent = seqs = bad = blurred = 0
        t0 = last = time.monotonic()
        while sent < a.packets and time.monotonic() - t0 < a.seconds:
            seed = rng.getrandbits(64)
            h.set_secret(seed & 0xFFFFFFFF or 1)  # a probe layout of its own, kept with a case
            h.set_mss_clamp(seed >> 32 & 7 != 0)  # clamping off in one sequence of eight
            gen = P.Generator(random.Random(seed), h.model, h.vpc_ifs)
            seq = []
            try:
                for _ in range(rng.randint(1, a.max_seq)):
                    d, f, i = gen.packet()
                    seq.append((d, f, i))
                    h.step(d, f, i)
                    sent += d != "time"
                h.check_invariants()
            except Inconclusive as e:
                blurred += 1
                print(f"inconclusive (seed {seed}), the machine stalled:\n{e}", file=sys.stderr)
            except AssertionError as e:  # a Disagreement, or the model's own consistency
                bad += 1
                p = save_case(seq, vpc_of, str(e), h.secret, h.mss_clamp)
                print(f"DISAGREEMENT (seed {seed}) kept as {p.name}:\n{e}", file=sys.stderr)
            seqs += 1
            if time.monotonic() - last > 10:
                last = time.monotonic()
                print(f"{sent:,} packets, {seqs:,} sequences, {bad} disagreements "
                      f"({sent / (last - t0):,.0f} packets/s)", file=sys.stderr, flush=True)
        h.close()
        el = time.monotonic() - t0
        print(f"fuzz: {sent:,} packets in {seqs:,} sequences, {bad} disagreements, "
              f"{blurred} inconclusive, {el:.0f} s, seed {a.seed}"
              f"{', fenced build' if a.fenced else ''}")
        print("paths drawn: " + ", ".join(f"{k} {v:,}" for k, v in sorted(h.drawn.items())))
        return 1 if bad else 0
    finally:
        shutil.rmtree(paths.pin_dir(node), ignore_errors=True)
        lab.destroy()


if __name__ == "__main__":
    sys.exit(main())
