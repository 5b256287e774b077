"""The desired state, kept in SQLite under the node's state directory.

Contract: `load()` returns the whole State; `transaction()` yields a State to change and writes it
back in one SQLite transaction when the body returns, or leaves the database untouched when the
body raises (the body is where the maps get reconciled, so a failure there undoes both). The
schema is normalised and versioned (an older store is upgraded by MIGRATIONS when a writer opens
it; `peek` reads it upgraded in memory); the file is state.db in paths.state_dir(node). Writers are
serialised by the node lock (lock.py), not by SQLite; SQLite's own locking only makes a reader
wait out a commit (BUSY_TIMEOUT), and any SQLite error becomes one EniplaneError line. The
file is in WAL mode (state.db-wal and state.db-shm beside it), for commits of one fsync. Node-wide
settings (timeouts, flows per ENI, the IPv4 settings) are integer rows of the settings table; a
row that is missing reads as its default. The parameters of the last `up` (nodeparams.py) are
text rows of the node_params table; none stored reads as an empty `State.node`.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import events, ipv4, nodeparams, paths
from .errors import EniplaneError
from .lifecycle import TIMEOUT_NAMES
from .model import Eni, Function, SecurityGroup, SgRule, State, Subnet, Vpc

SCHEMA_VERSION = 4
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vpcs (id TEXT PRIMARY KEY, idx INTEGER NOT NULL UNIQUE,
    cidr TEXT NOT NULL, iface TEXT NOT NULL, gateway TEXT NOT NULL, gateway_mac TEXT);
CREATE TABLE IF NOT EXISTS subnets (id TEXT PRIMARY KEY, vpc TEXT NOT NULL REFERENCES vpcs(id),
    cidr TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sgs (id TEXT PRIMARY KEY, vpc TEXT NOT NULL REFERENCES vpcs(id));
CREATE TABLE IF NOT EXISTS sg_rules (sg TEXT NOT NULL REFERENCES sgs(id), pos INTEGER NOT NULL,
    direction TEXT NOT NULL, proto TEXT NOT NULL, port_lo INTEGER NOT NULL,
    port_hi INTEGER NOT NULL, cidr TEXT NOT NULL, PRIMARY KEY (sg, pos));
CREATE TABLE IF NOT EXISTS workers (ip TEXT PRIMARY KEY, mac TEXT);
CREATE TABLE IF NOT EXISTS enis (id TEXT PRIMARY KEY, subnet TEXT NOT NULL REFERENCES subnets(id),
    sgs TEXT NOT NULL, address TEXT NOT NULL, vni INTEGER NOT NULL UNIQUE,
    idx INTEGER NOT NULL UNIQUE, port_lo INTEGER NOT NULL, port_hi INTEGER NOT NULL,
    max_flows INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS functions (name TEXT PRIMARY KEY, subnets TEXT NOT NULL,
    sgs TEXT NOT NULL, workers TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS node_params (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Each step takes a store from the version before it to its own: static MACs and placement came
# with version 2 (a version 1 store has neither: no worker was bound to an ENI then); the flow
# lifecycle's settings and per-ENI limits with version 3 (SCHEMA creates the settings table: a
# version 2 store has no row in it, which reads as the defaults it ran with). The IPv4 settings
# are rows of that table too, so they needed no new version: a store without them reads as the
# defaults every node ran with before they existed. Version 4 added the node_params table (SCHEMA
# creates it): a version 3 store has no `up` parameters, which the agent reports.
MIGRATIONS = {
    2: ("ALTER TABLE vpcs ADD COLUMN gateway_mac TEXT",
        "ALTER TABLE workers ADD COLUMN mac TEXT",
        "ALTER TABLE functions ADD COLUMN workers TEXT NOT NULL DEFAULT ''"),
    3: ("ALTER TABLE enis ADD COLUMN max_flows INTEGER NOT NULL DEFAULT 0",),
    4: (),
}
TABLES = ("sg_rules", "enis", "functions", "subnets", "sgs", "vpcs", "workers", "settings",
          "node_params")
# The settings table's keys: node-wide values, one row each.
TIMEOUT_KEY = "timeout_{}"
FLOWS_PER_ENI_KEY = "flows_per_eni"
IPV4_KEY = "ipv4_{}"
EVENTS_KEY = "events_{}"  # rows as the IPv4 settings' (no new version): absent reads as defaults
_EVENTS_FROM_ROW = {"drops": bool, "flows": bool, "rate": int}
# The settings table holds integers: an IPv4 setting is written as one and read back as itself.
_IPV4_TO_ROW = {"mss_clamp": int, "icmp_rate": int,
                "tunnel_gateway": lambda a: int(ipaddress.IPv4Address(a))}
_IPV4_FROM_ROW = {"mss_clamp": bool, "icmp_rate": int,
                  "tunnel_gateway": lambda n: str(ipaddress.IPv4Address(n))}
# Seconds a connection waits for another one's SQLite lock. With writers serialised by the node
# lock this only covers a reader meeting a commit, which takes milliseconds.
BUSY_TIMEOUT = 10.0


@contextmanager
def _sqlite_errors(path: Path, doing: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as e:
        raise EniplaneError(f"state store {path}: {doing} failed: {e}") from None


class Store:
    def __init__(self, node: str, path: Path | None = None):
        self.node = node
        self._cols: dict[str, list[str]] = {}
        self.path = path or paths.state_dir(node) / "state.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT)
            # write-ahead log: a commit is one fsync, not the rollback journal's three or four
            # (13 ms against 4 on this project's machines), and readers never wait for writers;
            # as durable (synchronous stays FULL). It stays set in the file once set.
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
            row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.Error as e:
            raise EniplaneError(f"cannot open the state store {self.path}: {e}") from None
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise EniplaneError(f"{self.path} has schema {row[0]}; this eniplane knows "
                                f"{SCHEMA_VERSION} (a newer eniplane wrote it)")
        if row is not None and int(row[0]) < SCHEMA_VERSION:
            self._migrate(int(row[0]))

    def _migrate(self, version: int) -> None:
        """Bring an older store up to SCHEMA_VERSION in one transaction."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[v]:
                    self.db.execute(stmt)
            self.db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
            self.db.execute("COMMIT")
        except sqlite3.Error as e:
            self.db.execute("ROLLBACK")
            raise EniplaneError(f"cannot upgrade {self.path} from schema {version}: {e}") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def peek(cls, node: str, path: Path | None = None) -> State:
        """The stored State, read only: no directory or database is created, and a node that
        never stored anything reads as an empty State (dry runs and listings use this)."""
        path = path or paths.state_dir(node) / "state.db"
        if not path.exists():
            return State()
        self = cls.__new__(cls)  # __init__ would create the schema
        self.node, self.path = node, path
        try:
            self.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                if row is not None and int(row[0]) > SCHEMA_VERSION:
                    raise EniplaneError(f"{path} has schema {row[0]}; this eniplane knows "
                                        f"{SCHEMA_VERSION} (a newer eniplane wrote it)")
                if row is not None and int(row[0]) < SCHEMA_VERSION:
                    # read an older store as its first writer will upgrade it, on a copy in
                    # memory: listings work right after an upgrade, and a reader writes nothing
                    mem = sqlite3.connect(":memory:", isolation_level=None)
                    self.db.backup(mem)
                    self.db.close()
                    self.db = mem
                    self.db.executescript(SCHEMA)
                    self._migrate(int(row[0]))
                return self.load()
            finally:
                self.db.close()
        except sqlite3.Error as e:
            raise EniplaneError(f"cannot read the state store {path}: {e}") from None

    def load(self) -> State:
        with _sqlite_errors(self.path, "reading"):
            return self._load()

    def _load(self) -> State:
        st = State()
        q = self.db.execute
        for vid, idx, cidr, iface, gw, gmac in q(
                "SELECT id, idx, cidr, iface, gateway, gateway_mac FROM vpcs"):
            st.vpcs[vid] = Vpc(vid, cidr, iface, gw, idx, gmac)
        for sid, vpc, cidr in q("SELECT id, vpc, cidr FROM subnets"):
            st.subnets[sid] = Subnet(sid, vpc, cidr)
        for gid, vpc in q("SELECT id, vpc FROM sgs"):
            st.sgs[gid] = SecurityGroup(gid, vpc)
        for gid, d, p, lo, hi, cidr in q("SELECT sg, direction, proto, port_lo, port_hi, cidr "
                                         "FROM sg_rules ORDER BY sg, pos"):
            st.sgs[gid].rules.append(SgRule(d, p, lo, hi, cidr))
        for ip, mac in q("SELECT ip, mac FROM workers"):
            st.workers.add(ip)
            if mac:
                st.worker_macs[ip] = mac
        for eid, sub, sgs, addr, vni, idx, lo, hi, mf in q(
                "SELECT id, subnet, sgs, address, vni, idx, port_lo, port_hi, max_flows "
                "FROM enis"):
            st.enis[eid] = Eni(eid, sub, tuple(sgs.split(",")), addr, vni, idx, lo, hi, mf)
        for name, subs, sgs, workers in q("SELECT name, subnets, sgs, workers FROM functions"):
            st.functions[name] = Function(name, subs.split(","), sgs.split(","),
                                          [w for w in workers.split(",") if w])
        settings = dict(q("SELECT key, value FROM settings"))
        for name in TIMEOUT_NAMES:
            st.timeouts[name] = settings.get(TIMEOUT_KEY.format(name), st.timeouts[name])
        st.flows_per_eni = settings.get(FLOWS_PER_ENI_KEY, st.flows_per_eni)
        for name in ipv4.NAMES:
            row = settings.get(IPV4_KEY.format(name))
            if row is not None:
                st.ipv4[name] = _IPV4_FROM_ROW[name](row)
        for name in events.NAMES:
            row = settings.get(EVENTS_KEY.format(name))
            if row is not None:
                st.events[name] = _EVENTS_FROM_ROW[name](row)
        params = dict(q("SELECT key, value FROM node_params"))
        if params:  # text rows: max_flows is the one number
            st.node = {k: params.get(k) for k in nodeparams.NAMES}
            st.node["max_flows"] = int(params["max_flows"])
        return st

    @staticmethod
    def _rows(st: State) -> dict[str, set[tuple]]:
        """Every table's rows for a State (what the tables hold once it is written)."""
        return {
            "vpcs": {(v.id, v.idx, v.cidr, v.iface, v.gateway, v.gateway_mac)
                     for v in st.vpcs.values()},
            "subnets": {(s.id, s.vpc, s.cidr) for s in st.subnets.values()},
            "sgs": {(g.id, g.vpc) for g in st.sgs.values()},
            "sg_rules": {(g.id, i, r.direction, r.proto, r.port_lo, r.port_hi, r.cidr)
                         for g in st.sgs.values() for i, r in enumerate(g.rules)},
            "workers": {(w, st.worker_macs.get(w)) for w in st.workers},
            "enis": {(e.id, e.subnet, ",".join(e.sgs), e.address, e.vni, e.idx, e.port_lo,
                      e.port_hi, e.max_flows) for e in st.enis.values()},
            "functions": {(f.name, ",".join(f.subnets), ",".join(f.sgs), ",".join(f.workers))
                          for f in st.functions.values()},
            "settings": {(TIMEOUT_KEY.format(k), v) for k, v in st.timeouts.items()}
            | {(FLOWS_PER_ENI_KEY, st.flows_per_eni)}
            | {(IPV4_KEY.format(k), _IPV4_TO_ROW[k](v)) for k, v in st.ipv4.items()}
            | {(EVENTS_KEY.format(k), int(v)) for k, v in st.events.items()},
            "node_params": {(k, str(v)) for k, v in st.node.items() if v is not None},
        }

    def _write(self, st: State, before: dict[str, set[tuple]]) -> None:
        """Only the rows that changed since `before` (the tables' rows as stored when the
        transaction began): a function attached to a store of thousands writes a row or two,
        not every table again, so a commit stays a few pages whatever the store holds."""
        after = self._rows(st)
        for t in TABLES:
            gone, new = before.get(t, set()) - after[t], after[t] - before.get(t, set())
            if gone:
                cols = self._columns(t)
                self.db.executemany(
                    f"DELETE FROM {t} WHERE " + " AND ".join(f"{c} IS ?" for c in cols),
                    sorted(gone, key=repr))
            if new:
                marks = ",".join("?" * len(next(iter(new))))
                self.db.executemany(f"INSERT INTO {t} VALUES ({marks})", sorted(new, key=repr))

    def _columns(self, table: str) -> list[str]:
        if table not in self._cols:
            self._cols[table] = [r[1] for r in self.db.execute(f"PRAGMA table_info({table})")]
        return self._cols[table]

    @contextmanager
    def transaction(self) -> Iterator[State]:
        """Yield the current State; what the body leaves in it is committed atomically."""
        with _sqlite_errors(self.path, "starting a transaction"):
            self.db.execute("BEGIN IMMEDIATE")
        try:
            st = self.load()
            before = {t: set(self.db.execute(f"SELECT * FROM {t}")) for t in TABLES}
            yield st
            with _sqlite_errors(self.path, "writing"):
                self._write(st, before)
                self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the error that got us here is the one to report
            raise
