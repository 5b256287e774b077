"""Flow logs in the AWS VPC Flow Logs format: what each ENI carried, per flow and window.

Contract: `FlowLogger(node, out_dir, interval, fmt)` is driven by `tick(now)` (time.monotonic(),
once a second: the agent's periodic task, or `eniplane flows log`) and `flow_ended(entries)` (the
entries a sweep or flush removed, as Datapath.flows() shapes them). At the end of each
aggregation window it reads the flow table once and writes, per flow, one ACCEPT record per
direction that carried packets since the last window (counter deltas, the deltas of a flow over
all its records add up to its counters), REJECT records for the window's security-group denials
(Datapath.take_sg_denials: exact counts, aggregated per 5-tuple), a NODATA record for each ENI
that carried nothing, and a SKIPDATA record for an ENI whose traffic could not all be logged. A
flow seen expired, or reported by flow_ended, gets its last record at once (its remainder, even
if zero: the record that says it ended) and is forgotten.

The views follow AWS's rules for traffic through a network interface. The default format (version
2) is the ENI's view: an outbound record has srcaddr = the ENI's address and srcport = the NAT
port the flow holds, dstaddr/dstport = the remote; the reply direction is its mirror image. The
custom format adds vpc-id, subnet-id, flow-direction and pkt-srcaddr/pkt-dstaddr, the packet's
addresses on the environment's side (the environment's own address where the ENI's stands in the
default view), as AWS's NAT gateway records do. Ports have no packet-level field in AWS's format:
the environment's port is in the JSON records (env_port). REJECT records carry the environment's
source port, since a denied flow never got a NAT port. ICMP records have ports 0, as AWS's do.

The datapath keeps no first-packet time per flow: `start` is the window's start (or the flow's
last packet, if earlier: never after `end`), `end` the flow's last packet. Times are Unix seconds.
Output: plain text (a header line, then one record per line) to stdout or to rotating files
under a directory (rotated by size and age, the oldest removed beyond `keep`), or JSON lines.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

from .errors import InvalidInput

DEFAULT_FIELDS = ("version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport",
                  "dstport", "protocol", "packets", "bytes", "start", "end", "action",
                  "log-status")
# AWS: a custom format's version is the highest version of its fields (vpc-id, subnet-id,
# pkt-srcaddr and pkt-dstaddr came with 3, flow-direction with 5).
CUSTOM_FIELDS = DEFAULT_FIELDS + ("vpc-id", "subnet-id", "flow-direction", "pkt-srcaddr",
                                  "pkt-dstaddr")
VERSIONS = {"default": 2, "custom": 5}
FORMATS = ("default", "custom", "json")
PROTO_ICMP = 1
NO_VALUE = "-"  # AWS: a field that does not apply to a record, or could not be computed


@dataclass
class Record:
    """One flow log record in every field either text format has, plus what JSON adds."""
    interface_id: str
    action: str = NO_VALUE  # ACCEPT | REJECT | "-" (NODATA, SKIPDATA)
    log_status: str = "OK"  # OK | NODATA | SKIPDATA
    srcaddr: str = NO_VALUE
    dstaddr: str = NO_VALUE
    srcport: int | str = NO_VALUE
    dstport: int | str = NO_VALUE
    protocol: int | str = NO_VALUE
    packets: int | str = NO_VALUE
    bytes: int | str = NO_VALUE
    start: int = 0
    end: int = 0
    account_id: str = NO_VALUE
    vpc_id: str = NO_VALUE
    subnet_id: str = NO_VALUE
    flow_direction: str = NO_VALUE  # egress (environment -> VPC) | ingress (replies)
    pkt_srcaddr: str = NO_VALUE
    pkt_dstaddr: str = NO_VALUE
    # JSON only: why it was written (window, end, reject, nodata, skipdata) and the flow's
    # environment side, which no AWS field holds
    event: str = "window"
    extra: dict[str, Any] = field(default_factory=dict)

    def field_values(self, fmt: str) -> list[str]:
        names = CUSTOM_FIELDS if fmt == "custom" else DEFAULT_FIELDS
        vals = {"version": VERSIONS["custom" if fmt == "custom" else "default"],
                **{n: getattr(self, n.replace("-", "_")) for n in names if n != "version"}}
        return [str(vals[n]) for n in names]

    def line(self, fmt: str) -> str:
        return " ".join(self.field_values(fmt))

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {n: getattr(self, n.replace("-", "_")) for n in CUSTOM_FIELDS
                               if n != "version"}
        return {"version": VERSIONS["custom"], **doc, "event": self.event, **self.extra}


def header(fmt: str) -> str:
    return " ".join(CUSTOM_FIELDS if fmt == "custom" else DEFAULT_FIELDS)


@dataclass(frozen=True)
class EniInfo:
    """What a record says about an ENI: its id, address, VPC and subnet (store names)."""
    id: str
    addr: str
    vpc: str = NO_VALUE
    subnet: str = NO_VALUE


def flow_identity(f: dict[str, Any]) -> tuple:
    """A flow as the table holds it (its key) and whose it is: an entry taken over by another
    environment's tuple is another flow."""
    return (f["vpc_idx"], f["proto"], f["eni_addr"], f["remote"], f["nat_port"], f["remote_port"],
            f["worker"], f["vni"], f["env_addr"], f["env_port"])


def flow_records(f: dict[str, Any], eni: EniInfo, d_tx: tuple[int, int], d_rx: tuple[int, int],
                 start: int, end: int, account: str, event: str,
                 always: bool = False) -> list[Record]:
    """A flow's records for one window: egress for (packets, bytes) `d_tx`, ingress for `d_rx`,
    each only if it carried packets (`always`: the egress one in any case, a flow's last)."""
    icmp = f["proto"] == PROTO_ICMP
    nat_port = 0 if icmp else f["nat_port"]
    remote_port = 0 if icmp else f["remote_port"]
    common = dict(interface_id=eni.id, action="ACCEPT", protocol=f["proto"],
                  start=min(start, end), end=end, account_id=account, vpc_id=eni.vpc,
                  subnet_id=eni.subnet, event=event,
                  extra={"worker": f["worker"], "vni": f["vni"], "env_addr": f["env_addr"],
                         "env_port": f["env_port"], "nat_port": f["nat_port"]})
    out = []
    if d_tx[0] or (always and not d_rx[0]):
        out.append(Record(srcaddr=f["eni_addr"], srcport=nat_port, dstaddr=f["remote"],
                          dstport=remote_port, packets=d_tx[0], bytes=d_tx[1],
                          flow_direction="egress", pkt_srcaddr=f["env_addr"],
                          pkt_dstaddr=f["remote"], **common))
    if d_rx[0]:
        out.append(Record(srcaddr=f["remote"], srcport=remote_port, dstaddr=f["eni_addr"],
                          dstport=nat_port, packets=d_rx[0], bytes=d_rx[1],
                          flow_direction="ingress", pkt_srcaddr=f["remote"],
                          pkt_dstaddr=f["env_addr"], **common))
    return out


def reject_records(denials: Iterable[dict[str, Any]], enis: dict[int, EniInfo],
                   wall: Callable[[int], int], account: str) -> list[Record]:
    """One REJECT record per (ENI, 5-tuple as the ENI would have sent it, environment address)
    for the security-group denials given (Part A's sg_denials entries: counts, first and last
    ns), their counts added up: denials of several workers' environments with the same address
    and port are one record, as AWS aggregates per 5-tuple."""
    agg: dict[tuple, dict[str, Any]] = {}
    for d in denials:
        eni = enis.get(d["vni"]) or EniInfo(f"vni-{d['vni']}", NO_VALUE)
        icmp = d["proto"] == PROTO_ICMP
        key = (d["vni"], eni, d["env_addr"], 0 if icmp else d["env_port"], d["remote"],
               0 if icmp else d["remote_port"], d["proto"])
        a = agg.setdefault(key, {"packets": 0, "bytes": 0, "first": d["first_ns"],
                                 "last": d["last_ns"], "workers": set()})
        a["packets"] += d["packets"]
        a["bytes"] += d["bytes"]
        a["first"] = min(a["first"], d["first_ns"])
        a["last"] = max(a["last"], d["last_ns"])
        a["workers"].add(d["worker"])
    out = []
    for (vni, eni, env_addr, env_port, remote, remote_port, proto), a in agg.items():
        out.append(Record(interface_id=eni.id, action="REJECT", srcaddr=eni.addr,
                          srcport=env_port, dstaddr=remote, dstport=remote_port,
                          protocol=proto, packets=a["packets"], bytes=a["bytes"],
                          start=wall(a["first"]), end=wall(a["last"]), account_id=account,
                          vpc_id=eni.vpc, subnet_id=eni.subnet, flow_direction="egress",
                          pkt_srcaddr=env_addr, pkt_dstaddr=remote, event="reject",
                          extra={"vni": vni, "workers": sorted(a["workers"]),
                                 "env_addr": env_addr,
                                 "env_port": env_port}))
    return out


@dataclass
class _Seen:
    tx: tuple[int, int]
    rx: tuple[int, int]
    vni: int
    ended: bool = False


class FlowTracker:
    """The counters each flow had when it was last logged, and the records a new look at the
    table makes of them (pure: the table, the ENIs and the clock are handed in)."""

    def __init__(self, account: str = NO_VALUE):
        self.account = account
        self.seen: dict[tuple, _Seen] = {}

    def baseline(self, flows: Iterable[dict[str, Any]]) -> None:
        """Remember the flows as they are without logging them: what came before logging
        started is not in any window."""
        for f in flows:
            self.seen[flow_identity(f)] = _Seen((f["tx_packets"], f["tx_bytes"]),
                                                (f["rx_packets"], f["rx_bytes"]), f["vni"],
                                                ended=not f.get("live", True))

    def _delta(self, f: dict[str, Any], s: _Seen | None) -> tuple[tuple[int, int], tuple[int, int]]:
        tx, rx = (f["tx_packets"], f["tx_bytes"]), (f["rx_packets"], f["rx_bytes"])
        if s is None or s.ended or tx[0] < s.tx[0] or rx[0] < s.rx[0]:
            # new, or an entry that serves its tuple again from zero (a reopened flow)
            return tx, rx
        return (tx[0] - s.tx[0], tx[1] - s.tx[1]), (rx[0] - s.rx[0], rx[1] - s.rx[1])

    def window(self, flows: Iterable[dict[str, Any]], enis: dict[int, EniInfo], start: int,
               wall: Callable[[int], int]) -> tuple[list[Record], set[int]]:
        """Records for one window from the whole table (`flows` with `live`); returns them and
        the VNIs whose traffic was partly lost (a flow that went without being reported)."""
        out: list[Record] = []
        present = set()
        for f in flows:
            ident = flow_identity(f)
            present.add(ident)
            s = self.seen.get(ident)
            live = f.get("live", True)
            if s is not None and s.ended and not live:
                continue  # its last record was written
            d_tx, d_rx = self._delta(f, s)
            eni = enis.get(f["vni"]) or EniInfo(f"vni-{f['vni']}", f["eni_addr"])
            out += flow_records(f, eni, d_tx, d_rx, start, wall(f["last_seen_ns"]),
                                self.account, "window" if live else "end", always=not live)
            self.seen[ident] = _Seen((f["tx_packets"], f["tx_bytes"]),
                                     (f["rx_packets"], f["rx_bytes"]), f["vni"], ended=not live)
        lost = set()
        for ident in [i for i in self.seen if i not in present]:
            s = self.seen.pop(ident)
            if not s.ended:  # evicted, or removed by someone who did not say: its tail is lost
                lost.add(s.vni)
        return out, lost

    def ended(self, entries: Iterable[dict[str, Any]], enis: dict[int, EniInfo], start: int,
              wall: Callable[[int], int]) -> list[Record]:
        """The last records of flows that were removed (swept, flushed): their remainder since
        the last window, and they are forgotten."""
        out: list[Record] = []
        for f in entries:
            s = self.seen.pop(flow_identity(f), None)
            if s is not None and s.ended:
                continue
            d_tx, d_rx = self._delta(f, s)
            eni = enis.get(f["vni"]) or EniInfo(f"vni-{f['vni']}", f["eni_addr"])
            out += flow_records(f, eni, d_tx, d_rx, start, wall(f["last_seen_ns"]),
                                self.account, "end", always=True)
        return out


def status_records(enis: dict[int, EniInfo], active: set[int], lost: set[int], start: int,
                   end: int, account: str) -> list[Record]:
    """NODATA for each ENI that carried nothing in the window, SKIPDATA for each whose records
    are incomplete (AWS's log-status values)."""
    out = []
    for vni, eni in sorted(enis.items()):
        status = "SKIPDATA" if vni in lost else "NODATA" if vni not in active else None
        if status:
            out.append(Record(interface_id=eni.id, log_status=status, start=start, end=end,
                              account_id=account, vpc_id=eni.vpc, subnet_id=eni.subnet,
                              event=status.lower()))
    return out


class FlowLogWriter:
    """Records to stdout or to files under a directory, rotated by size and age."""

    def __init__(self, out_dir: str | Path | None, fmt: str = "default",
                 max_bytes: int = 64 << 20, max_age: float = 3600.0, keep: int = 24,
                 stream: TextIO | None = None):
        if fmt not in FORMATS:
            raise InvalidInput(f"flow log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.fmt = fmt
        self.dir = Path(out_dir) if out_dir is not None else None
        self.max_bytes, self.max_age, self.keep = max_bytes, max_age, keep
        self._fh: TextIO | None = None
        self._opened = 0.0
        self._stream = stream
        self._seq = 0
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        elif fmt != "json":
            self._out().write(header(fmt) + "\n")

    def _out(self) -> TextIO:
        return self._stream or sys.stdout

    @property
    def path(self) -> Path | None:
        return Path(self._fh.name) if self._fh is not None and self.dir is not None else None

    def _file(self) -> TextIO:
        now = time.time()
        if self._fh is not None and (self._fh.tell() >= self.max_bytes or
                                     now - self._opened >= self.max_age):
            self._fh.close()
            self._fh = None
        if self._fh is None:
            assert self.dir is not None
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
            self._seq += 1
            ext = "jsonl" if self.fmt == "json" else "log"
            p = self.dir / f"flows-{stamp}-{os.getpid()}-{self._seq}.{ext}"
            self._fh = open(p, "a", encoding="utf-8")
            self._opened = now
            if self.fmt != "json":
                self._fh.write(header(self.fmt) + "\n")
            self._prune()
        return self._fh

    def _prune(self) -> None:
        assert self.dir is not None
        files = sorted(self.dir.glob("flows-*"), key=lambda p: p.stat().st_mtime)
        for p in files[:max(0, len(files) - self.keep)]:
            if self._fh is None or p != Path(self._fh.name):
                p.unlink(missing_ok=True)

    def write(self, records: Iterable[Record]) -> int:
        lines = [json.dumps(r.as_json()) if self.fmt == "json" else r.line(self.fmt)
                 for r in records]
        if not lines:
            return 0
        out = self._file() if self.dir is not None else self._out()
        out.write("\n".join(lines) + "\n")
        out.flush()
        return len(lines)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class FlowLogger:
    """The flow log of one node: windows of `interval` seconds, records written by a
    FlowLogWriter. `denials` gives the window's security-group denials and forgets them
    (Datapath.take_sg_denials by default, where the datapath has it)."""

    def __init__(self, node: str, out_dir: str | Path | None, interval: int = 60,
                 fmt: str = "default", account: str = NO_VALUE,
                 denials: Callable[[], list[dict]] | None = None,
                 writer: FlowLogWriter | None = None, netns: str | None = None):
        from .datapath import Datapath

        if interval < 1:
            raise InvalidInput(f"flow log interval must be at least 1 second, not {interval}")
        self.node, self.interval = node, interval
        self.writer = writer or FlowLogWriter(out_dir, fmt)
        self.tracker = FlowTracker(account)
        self.dp = Datapath(node, netns)
        if denials is None:
            denials = getattr(self.dp, "take_sg_denials", None) or (lambda: [])
        self._denials = denials
        self._next: float | None = None
        self._window_wall = int(time.time())
        self.records = 0  # written so far

    def close(self) -> None:
        self.writer.close()
        self.dp.close()

    def __enter__(self) -> "FlowLogger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wall(self) -> Callable[[int], int]:
        """Datapath ns (CLOCK_MONOTONIC_COARSE) to Unix seconds, at this moment's offset."""
        now_ns, now = self.dp.now_ns(), time.time()
        return lambda ns: int(now - max(0, now_ns - ns) / 1e9)

    def enis(self) -> dict[int, EniInfo]:
        """The programmed ENIs by VNI, named from the store where it knows them."""
        from .store import Store

        try:
            st = Store.peek(self.node)
        except Exception:  # noqa: BLE001 - a node driven without a store still logs by VNI
            st = None
        named = {}
        if st is not None:
            for e in st.enis.values():
                sub = st.subnets.get(e.subnet)
                named[e.vni] = EniInfo(e.id, e.address, sub.vpc if sub else NO_VALUE, e.subnet)
        return {vni: named.get(vni) or EniInfo(f"vni-{vni}", e["addr"])
                for vni, e in self.dp.enis().items()}

    def _flows(self) -> list[dict[str, Any]]:
        return self.dp.flows()

    def tick(self, now: float) -> int:
        """Called every second: at a window's end, write its records. Returns how many."""
        if self._next is None:
            self.tracker.baseline(self._flows())
            self._denials()  # denials from before logging began are no window's
            self._next = now + self.interval
            self._window_wall = int(time.time())
            return 0
        if now < self._next:
            return 0
        self._next += self.interval * max(1, int((now - self._next) // self.interval) + 1)
        return self.flush()

    def flush(self) -> int:
        """End the current window now and write its records."""
        start, end = self._window_wall, int(time.time())
        wall = self._wall()
        enis = self.enis()
        lost: set[int] = set()
        try:
            records, lost = self.tracker.window(self._flows(), enis, start, wall)
        except Exception:  # noqa: BLE001 - the window is marked, the logger goes on
            records, lost = [], set(enis)
        try:
            records += reject_records(self._denials(), enis, wall, self.tracker.account)
        except Exception:  # noqa: BLE001
            lost |= set(enis)
        active = {r.extra.get("vni") for r in records}
        records += status_records(enis, active, lost, start, end, self.tracker.account)
        self._window_wall = end
        n = self.writer.write(records)
        self.records += n
        return n


    def flow_ended(self, entries: Iterable[dict[str, Any]]) -> int:
        """Flows that were removed (the sweeper's or a flush's entries): their last records,
        written now."""
        entries = list(entries)
        if not entries:
            return 0
        n = self.writer.write(self.tracker.ended(entries, self.enis(), self._window_wall,
                                                 self._wall()))
        self.records += n
        return n
