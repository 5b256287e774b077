"""Where a packet's nanoseconds go: eniplane's programs profiled by source line and by function.

Contract: `python -m bench.profile [--flows 1,65536] [--direction forward|return|both]
[--seconds 3] [--top 20] [--json F] [--asm DIR]` stages the benchmark topology (sinks on both far
ends), opens the flows as the bench does (throughput.open_flows: shuffled), and for each flow count
and direction runs the generator for `seconds` while `perf record -g` samples CPU 0, where the
generator, the node's programs and the sink all run. A sample counts for the program when its call
chain passes through the program's JIT image: the innermost address inside the image names the
source line (the kernel's jited_line_info, BTF's line records), so time spent in a helper (a map
lookup the verifier did not inline, bpf_xdp_adjust_head) counts for the line that called it. Shares
become nanoseconds by the program's own run time per packet over the same window (run_time_ns /
run_cnt, BPF_ENABLE_STATS). Lines are also summed per enclosing C function, read from the source
files (inlined helpers are where the time is, so a function here is a stage). With `--asm DIR` it
also writes each program's JIT image, disassembled by objdump (binutils, which gcc brings), with
every instruction's ns per packet and the source line above each run of instructions: where a
helper's cost lands (the instruction after its call) and which instructions of a line wait. It
needs perf (Debian: linux-perf) and prints tables; nothing else depends on it, and `make bench`
does not run it."""

from __future__ import annotations

import argparse
import bisect
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from eniplane import bpfsys
from eniplane.loader import bpf_dir

from . import report
from . import throughput as TP
from . import topo as T
from .gen import pin_cpu0, rfc4814_ports

PROGRAM = {"forward": "xdp_fabric", "return": "xdp_vpc"}


@dataclass(frozen=True)
class Line:
    file: str
    line: int
    text: str


class JitLines:
    """A loaded program's JIT image and, for each address in it, the source line it came from."""

    def __init__(self, fd: int) -> None:
        self.start, size, btf_id, recs = bpfsys.prog_jited_lines(fd)
        if not recs:
            raise RuntimeError("the program carries no line information (loaded without BTF?)")
        self.end = self.start + size
        strings = _btf_strings(bpfsys.btf_raw(btf_id))
        recs.sort()
        self.addrs = [r[0] for r in recs]
        lines = [Line(_string(strings, f), lc >> 10, _string(strings, t).strip())
                 for _, f, t, lc in recs]
        self.lines = aligned(lines, bpf_dir() / "eniplane.c")

    def holds(self, ip: int) -> bool:
        return self.start <= ip < self.end

    def line_of(self, ip: int) -> Line | None:
        i = bisect.bisect_right(self.addrs, ip) - 1
        return self.lines[i] if i >= 0 else None


_BCC_MAP_CALL = re.compile(r"bpf_\w+\(\(void \*\)bpf_pseudo_fd\(1, -\d+\),\s*")
_SRC_MAP_CALL = re.compile(r"\b\w+\.(?:lookup|update|delete|redirect_map|ringbuf_output|call)\(")


def _normal(text: str) -> str:
    """A line with its map calls in one form, bcc's rewrite or the source's."""
    return _SRC_MAP_CALL.sub("MAP(", _BCC_MAP_CALL.sub("MAP(", text.strip()))


def aligned(lines: list[Line], source: Path, near: int = 12) -> list[Line]:
    """bcc compiles eniplane.c as "main.c", with lines of its own added (before the file and
    where it expands the map declarations) and map calls rewritten in place. A line of a file
    that is not on disk is moved back onto `source`: anchors are lines whose text occurs once
    in each (kept in increasing order in both); any other line goes where the nearest anchor
    before it puts it, or to the line of the same text (map calls read alike) closest to there,
    within `near` lines."""
    if not source.is_file():
        return lines
    where: dict[str, list[int]] = {}
    for no, t in enumerate(source.read_text().splitlines(), 1):
        where.setdefault(_normal(t), []).append(no)
    virtual = [ln for ln in lines if not Path(ln.file).is_file()]
    seen = Counter(_normal(ln.text) for ln in virtual)
    pairs = sorted({(ln.line, where[_normal(ln.text)][0]) for ln in virtual
                    if seen[_normal(ln.text)] == 1 and len(where.get(_normal(ln.text), ())) == 1
                    and len(ln.text) > 8})
    anchors = _increasing(pairs)
    if not anchors:
        return lines
    keys = [a for a, _ in anchors]
    out = []
    for ln in lines:
        if Path(ln.file).is_file():
            out.append(ln)
            continue
        i = max(0, bisect.bisect_right(keys, ln.line) - 1)
        guess = ln.line - (anchors[i][0] - anchors[i][1])
        same = [n for n in where.get(_normal(ln.text), ()) if abs(n - guess) <= near]
        if same:
            out.append(Line(str(source), min(same, key=lambda n: abs(n - guess)), ln.text))
        elif ln.line < keys[0] or not ln.text:
            out.append(Line("bcc", ln.line, ln.text))  # bcc's own lines (or none)
        else:
            out.append(Line(str(source), guess, ln.text))
    return out


def _increasing(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The longest run of pairs (sorted by their first) whose seconds increase too."""
    tails: list[int] = []  # tails[k]: index of the smallest last second of a run of k+1
    prev = [-1] * len(pairs)
    for i, (_, b) in enumerate(pairs):
        k = bisect.bisect_left([pairs[j][1] for j in tails], b)
        prev[i] = tails[k - 1] if k else -1
        if k == len(tails):
            tails.append(i)
        else:
            tails[k] = i
    out, i = [], tails[-1] if tails else -1
    while i >= 0:
        out.append(pairs[i])
        i = prev[i]
    return out[::-1]


def _btf_strings(raw: bytes) -> bytes:
    magic, _, _, hdr_len, _, _, str_off, str_len = struct.unpack_from("<HBBIIIII", raw)
    if magic != 0xEB9F:
        raise RuntimeError("not BTF")
    return raw[hdr_len + str_off:hdr_len + str_off + str_len]


def _string(strings: bytes, off: int) -> str:
    end = strings.find(b"\0", off)
    return strings[off:end if end >= 0 else None].decode(errors="replace")


_FUNC = re.compile(r"^[A-Za-z_][\w\s\*]*?\b(\w+)\s*\(")


def functions_of(path: Path) -> dict[int, str]:
    """Line number -> the C function whose definition holds it, for a clang-formatted file:
    a signature starts at column 0, the body's braces stand alone at column 0."""
    out: dict[int, str] = {}
    sig: tuple[int, str] | None = None  # where the last signature began, and its name
    body: str | None = None
    for no, text in enumerate(path.read_text().splitlines(), 1):
        if body is not None:
            out[no] = body
            if text.startswith("}"):
                body = None
            continue
        m = _FUNC.match(text)
        if m and not text.startswith(("#", "struct ", "enum ", "union ", "typedef ")):
            sig = (no, m.group(1))
        if sig and text.rstrip().endswith(";"):
            sig = None  # a prototype
        elif sig and text == "{":
            body = sig[1]
            for n in range(sig[0], no + 1):
                out[n] = body
            sig = None
    return out


def _perf_samples(data: Path) -> list[list[int]]:
    """Each sample's call chain (innermost first), from perf script."""
    p = subprocess.run(["perf", "script", "-i", str(data), "-F", "ip"], capture_output=True,
                       text=True, timeout=600)
    chains, cur = [], []
    for text in p.stdout.splitlines():
        text = text.strip()
        if not text:
            if cur:
                chains.append(cur)
            cur = []
            continue
        try:
            cur.append(int(text.split()[0], 16))
        except ValueError:
            continue
    if cur:
        chains.append(cur)
    return chains


def by_address(chains: list[list[int]], jit: JitLines) -> Counter:
    """Samples per offset into the image: the innermost address of each chain inside it (a
    sample in a helper counts for the instruction after the call)."""
    got: Counter = Counter()
    for chain in chains:
        for ip in chain:
            if jit.holds(ip):
                got[ip - jit.start] += 1
                break
    return got


_OBJDUMP_LINE = re.compile(r"^\s*([0-9a-f]+):\s+(.*)$")


def annotated(jit: JitLines, image: bytes, samples: Counter, ns: float) -> str:
    """The image disassembled, each instruction with its ns per packet (its share of `samples`
    times `ns`), a "----" line naming the source line before each run of its instructions."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(image)
        f.flush()
        dis = subprocess.run(["objdump", "-D", "-b", "binary", "-m", "i386:x86-64",
                              f"--adjust-vma={jit.start:#x}", f.name],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    total = sum(samples.values()) or 1
    out, last = [f"# ns per packet, offset: instruction ({ns:.1f} ns per packet, "
                 f"{sum(samples.values())} samples)"], None
    for text in dis.splitlines():
        m = _OBJDUMP_LINE.match(text)
        if not m:
            continue
        ip = int(m.group(1), 16)
        ln = jit.line_of(ip)
        if ln != last:
            out.append(f"---- {Path(ln.file).name}:{ln.line} {ln.text}" if ln else "---- ?")
            last = ln
        off = ip - jit.start
        out.append(f"{ns * samples[off] / total:6.1f}  {off:5x}: {m.group(2)}")
    return "\n".join(out) + "\n"


def attribute(chains: list[list[int]], jit: JitLines) -> Counter:
    """Samples per source line: the innermost address of each chain inside the image."""
    got: Counter = Counter()
    for off, n in by_address(chains, jit).items():
        ln = jit.line_of(jit.start + off)
        if ln:
            got[ln] += n
    return got


def profile_one(t: T.Topo, gen, direction: str, seconds: float, workdir: Path,
                asm: Path | None = None) -> dict:
    """Profile one direction; with `asm`, write its program's annotated image there too."""
    fd = t.node_prog_fd("eniplane", direction)
    jit = JitLines(fd)
    data = workdir / f"perf-{direction}.data"

    def recorded() -> None:
        rec = subprocess.Popen(["perf", "record", "-q", "-g", "-C", "0", "-o", str(data), "--",
                                "sleep", str(seconds + 0.5)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            gen.run(seconds)
        finally:
            rec.wait(timeout=seconds + 60)

    runs, ns = TP.program_runs(fd, recorded)
    chains = _perf_samples(data)
    per_line = attribute(chains, jit)
    if asm:
        image = bpfsys.prog_code(fd, jited=True)
        asm.write_text(annotated(jit, image, by_address(chains, jit), ns))
    total = sum(per_line.values())
    funcs: dict[str, dict[int, str]] = {}
    by_func: Counter = Counter()
    rows = []
    for ln, n in per_line.most_common():
        f = funcs.setdefault(ln.file, _functions_for(ln.file))
        fn = f.get(ln.line, "?")
        by_func[fn] += n
        rows.append({"file": Path(ln.file).name, "line": ln.line, "function": fn,
                     "text": ln.text, "samples": n, "ns": ns * n / total if total else 0.0})
    return {"program": PROGRAM[direction], "ns_per_packet": ns, "packets": runs,
            "samples": total, "lines": rows,
            "functions": [{"function": fn, "samples": n, "ns": ns * n / total if total else 0.0}
                          for fn, n in by_func.most_common()]}


def _functions_for(file: str) -> dict[int, str]:
    p = Path(file)
    if not p.is_file():
        p = bpf_dir() / p.name
    return functions_of(p) if p.is_file() else {}


def run(flow_counts: list[int], directions: list[str], seconds: float, max_flows: int,
        progress=print, asm_dir: Path | None = None) -> dict:
    if not shutil.which("perf"):
        raise SystemExit("bench.profile needs perf (Debian: apt install linux-perf)")
    if asm_dir and not shutil.which("objdump"):
        raise SystemExit("bench.profile --asm needs objdump (Debian: apt install binutils)")
    if asm_dir:
        asm_dir.mkdir(parents=True, exist_ok=True)
    pin_cpu0()
    res: dict = {}
    with TP.staged_for_timing(max_flows) as (t, dp), \
            tempfile.TemporaryDirectory(prefix="eniplane-profile-") as tmp:
        for n in flow_counts:
            ports = rfc4814_ports(n)
            dp.flush_flows()
            TP.open_flows(t, "xdp", ports)
            made = [TP._generator("xdp", t, "forward", ports)]
            try:
                if "return" in directions:
                    made.append(TP._generator("xdp", t, "return",
                                              TP.reply_ports(t, "eniplane", ports, dp)))
                gens = {"forward": made[0], "return": made[-1]}
                for d in directions:
                    t.use("eniplane", d)
                    gens[d].run(0.3)  # warm
                    asm = asm_dir / f"{PROGRAM[d]}-{n}-flows.s" if asm_dir else None
                    r = profile_one(t, gens[d], d, seconds, Path(tmp), asm)
                    res.setdefault(n, {})[d] = r
                    progress(f"{n} flows, {d}: {r['ns_per_packet']:.0f} ns per packet, "
                             f"{r['samples']} samples in {r['program']}")
            finally:
                for g in made:
                    g.close()
    return res


def table(res: dict, top: int) -> str:
    out = []
    for n, dirs in res.items():
        for d, r in dirs.items():
            out.append(f"### {n:,} flow(s), {d} ({r['program']}): {r['ns_per_packet']:.0f} ns "
                       f"per packet, {r['samples']} samples\n")
            out.append("| function | ns per packet | share |\n|---|---|---|")
            for f in r["functions"][:top]:
                out.append(f"| {f['function']} | {f['ns']:.1f} | "
                           f"{f['samples'] / max(1, r['samples']):.0%} |")
            out.append("\n| line | function | ns per packet | source |\n|---|---|---|---|")
            for ln in r["lines"][:top]:
                src = ln["text"].replace("|", "\\|")[:70]
                out.append(f"| {ln['file']}:{ln['line']} | {ln['function']} | {ln['ns']:.1f} | "
                           f"`{src}` |")
            out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", default="1,65536")
    ap.add_argument("--direction", choices=("forward", "return", "both"), default="both")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--max-flows", type=int, default=T.DEFAULT_MAX_FLOWS)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--asm", type=Path, metavar="DIR",
                    help="write each program's JIT image, annotated per instruction, here")
    a = ap.parse_args(argv)
    dirs = ["forward", "return"] if a.direction == "both" else [a.direction]
    res = run([int(x) for x in a.flows.split(",")], dirs, a.seconds, a.max_flows,
              progress=report.progress, asm_dir=a.asm)
    return report.finish(table(res, a.top), res, a.json)


if __name__ == "__main__":
    sys.exit(main())
