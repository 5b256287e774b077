"""The node lock between processes: a second command waits for the first, a bounded wait ends in
one line naming the holder, and SQLite's own lock errors never surface as a traceback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time

import pytest

from eniplane import lock, store
from eniplane.errors import EniplaneError
from eniplane.store import Store

PY = sys.executable
# Holds the node lock with its argv as the command line, until its stdin closes (or for HOLD
# seconds); prints "held" once it has the lock.
HOLDER = """
import os, sys, time
from eniplane import lock
node, hold = os.environ["NODE"], float(os.environ["HOLD"])
with lock.held(node, wait=30):
    print("held", flush=True)
    if hold < 0:
        sys.stdin.read()
    else:
        time.sleep(hold)
"""


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("ENIPLANE_STATE_DIR", str(tmp_path))
    return tmp_path


def start_holder(node: str, hold: float, *cmd: str) -> subprocess.Popen:
    p = subprocess.Popen([PY, "-c", HOLDER, *cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "NODE": node, "HOLD": str(hold)})
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_process_waits_then_gets_the_lock(state):
    holder = start_holder("n1", 1.0)
    t0 = time.monotonic()
    with lock.held("n1", wait=20):
        waited = time.monotonic() - t0
        assert holder.wait(timeout=5) == 0  # it had finished before we got in
    assert waited > 0.5
    assert (state / "n1" / "lock").read_text() == ""  # released: no holder named any more


def test_bounded_wait_names_the_holder(state):
    holder = start_holder("n2", -1, "function", "attach", "fn-x", "--subnet", "s")
    try:
        t0 = time.monotonic()
        with pytest.raises(EniplaneError) as ei:
            with lock.held("n2", wait=0.5):
                pass
        assert 0.5 <= time.monotonic() - t0 < 3
        assert str(ei.value) == (f"node n2 is busy: pid {holder.pid} (eniplane function attach "
                                 f"fn-x --subnet s) holds {state / 'n2' / 'lock'}; waited 0.5 s")
    finally:
        holder.communicate("")
    with lock.held("n2", wait=0):  # free again once the holder is gone
        pass


def test_busy_command_fails_with_one_line(state):
    holder = start_holder("n3", -1, "sync")
    try:
        env = {**os.environ, "ENIPLANE_LOCK_TIMEOUT": "0.3"}
        p = subprocess.run([PY, "-m", "eniplane", "worker", "add", "100.64.0.11", "--node", "n3"],
                           capture_output=True, text=True, env=env, timeout=60)
    finally:
        holder.communicate("")
    assert p.returncode == 1
    assert p.stderr.splitlines() == [
        f"eniplane: error: node n3 is busy: pid {holder.pid} (eniplane sync) holds "
        f"{state / 'n3' / 'lock'}; waited 0.3 s"]
    with Store("n3") as s:
        assert s.load().workers == set()  # the command did nothing


def test_concurrent_commands_all_land(state):
    ips = [f"100.64.0.{i}" for i in range(20, 30)]
    procs = [subprocess.Popen([PY, "-m", "eniplane", "worker", "add", ip, "--node", "n4"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for ip in ips]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with Store("n4") as s:
        assert s.load().workers == set(ips)


def test_lock_is_reentrant_in_one_process(state):
    with lock.held("n5", wait=0):
        with lock.held("n5", wait=0):
            pass
        # still held by us after the inner block: another process cannot take it
        p = subprocess.run([PY, "-c", "from eniplane import lock\n"
                            "with lock.held('n5', wait=0.2): pass"], capture_output=True, text=True)
        assert p.returncode != 0 and f"pid {os.getpid()}" in p.stderr


def test_lock_timeout_from_the_environment(state, monkeypatch):
    monkeypatch.setenv(lock.ENV_TIMEOUT, "2.5")
    assert lock.timeout() == 2.5
    monkeypatch.setenv(lock.ENV_TIMEOUT, "soon")
    with pytest.raises(EniplaneError, match="ENIPLANE_LOCK_TIMEOUT"):
        lock.timeout()


def test_sqlite_busy_is_one_line_not_a_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "BUSY_TIMEOUT", 0.2)
    path = tmp_path / "s.db"
    with Store("n", path) as s:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # a writer that is not eniplane (or an old one)
        try:
            with pytest.raises(EniplaneError, match=r"^state store .*s\.db: starting a "
                                                    r"transaction failed: database is locked$"):
                with s.transaction():
                    pass
        finally:
            other.execute("ROLLBACK")
            other.close()
        with s.transaction() as st:  # usable again afterwards
            st.add_worker("100.64.0.11")
        assert s.load().workers == {"100.64.0.11"}
