"""One lock per node, so that commands that change a node run one at a time.

Contract: `held(node)` is a context manager around an flock(2) on <state dir>/lock. Every command
that writes the store or programs the maps (every mutation, `sync`, `up`, `down`) holds it from
before it reads the store until after the maps are final, including a failed command's clean-up
re-sync; so a failed command can never undo another one's committed change, and the store and the
maps are never seen apart by a writer. Waiting is bounded (ENIPLANE_LOCK_TIMEOUT seconds, default
30); when it runs out, EniplaneError names the holder from the pid and command line it wrote into
the lock file. The lock is re-entrant within a process (`up` then `sync` in one command). The
kernel drops it when the holder dies, so a crash never leaves the node locked.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from . import paths
from .errors import EniplaneError

DEFAULT_TIMEOUT = 30.0
POLL = 0.05
ENV_TIMEOUT = "ENIPLANE_LOCK_TIMEOUT"

F = TypeVar("F", bound=Callable)

_held: dict[str, list[int]] = {}  # lock path -> [fd, depth], for re-entry within one process


def lock_path(node: str) -> Path:
    return paths.state_dir(node) / "lock"


def timeout() -> float:
    raw = os.environ.get(ENV_TIMEOUT)
    if raw is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise EniplaneError(f"{ENV_TIMEOUT}={raw!r} is not a number of seconds")
    return value


def holder(path: Path) -> str:
    """'pid N (command)' as the holder wrote it, or a placeholder if it has not written yet."""
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    pid, _, cmd = text.partition(" ")
    return f"pid {pid} ({cmd})" if pid.isdigit() else "another process"


def _command() -> str:
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    if prog in ("__main__.py", "-m", "-c"):
        prog = "eniplane"
    return " ".join([prog, *sys.argv[1:]])


def _acquire(path: Path, node: str, wait: float, poll: float, who: Callable[[], str]) -> int:
    """`path` opened (made if missing) and exclusively flocked within `wait` seconds, polling
    every `poll`: its descriptor, whose closing releases the lock. Past the wait, an error that
    names `who()` holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise EniplaneError(f"cannot open the lock {path}: {e.strerror}") from None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                busy = who()
                os.close(fd)
                raise EniplaneError(f"node {node} is busy: {busy} holds {path}; "
                                    f"waited {wait:g} s") from None
            time.sleep(poll)


@contextmanager
def held(node: str, wait: float | None = None) -> Iterator[None]:
    path = lock_path(node)
    key = str(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(path, node, timeout() if wait is None else wait, POLL, lambda: holder(path))
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {_command()}\n".encode(), 0)
        _held[key] = [fd, 1]
        try:
            yield
        finally:
            del _held[key]
            os.ftruncate(fd, 0)  # a waiter must not name a holder that has gone
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


def locked(fn: F) -> F:
    """Run fn(node, ...) holding node's lock."""
    @wraps(fn)
    def run(node: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        with held(node):
            return fn(node, *args, **kwargs)
    return run  # type: ignore[return-value]


@contextmanager
def exclusive(node: str, name: str, wait: float | None = None) -> Iterator[None]:
    """An flock on <state dir>/<name> of its own, held for one step that needs no node lock
    (Datapath._remove_flows: sweeps and flushes). Unlike `held` it is not re-entrant, and every
    call opens the file anew: two threads of one process (the agent's sweep and an API
    request's flush) exclude each other too, as flock does between open file descriptions.
    Bounded like `held`."""
    fd = _acquire(paths.state_dir(node) / name, node, timeout() if wait is None else wait,
                  0.001, lambda: "another process")
    try:
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
