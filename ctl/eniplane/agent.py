"""`eniplane agent`: the long-running control plane of one node.

Contract: `Agent(node, ...).run()` serves the API (api.py) on a Unix socket (and optionally TCP),
and /metrics, /healthz, /readyz on the metrics address, from the start; brings the node up from
the parameters `up` stored (nodeparams.py) when it is not up, or exits with EniplaneError when
none are stored; syncs it; then reports READY=1 to systemd (sdnotify.py) and, once a second,
re-syncs when the store changed (SQLite's data_version, its own API writes excepted), sweeps
expired flows every `sweep_interval` seconds (handing what went to `on_swept`), and calls every
`tasks` entry with time.monotonic(). `stop()` (SIGTERM, SIGINT) ends it after the step under
way: it stops serving and returns; nothing is detached or unpinned, so the datapath keeps
forwarding without it. One agent per node (an flock on <state dir>/agent.lock). Everything that
takes the node lock runs under one mutex: lock.held is re-entrant per process, not per thread.
`registry` (prometheus_client) holds the agent's own metrics (AgentMetrics) and whatever a
caller registers (the datapath's collector).
"""

from __future__ import annotations

import fcntl
import gc
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

from . import lock, ops, paths, sdnotify
from . import node as nodemod
from .errors import EniplaneError, UsageError

T = TypeVar("T")
log = logging.getLogger("eniplane.agent")

DEFAULT_METRICS = "127.0.0.1:9469"
DEFAULT_SWEEP_INTERVAL = 10.0
RUN_DIR = Path("/run/eniplane")
TICK = 1.0  # seconds between two looks at the store, and between two task calls
STALL = 60.0  # /healthz fails when the loop has not come round for this long
API_LATENCY_BUCKETS = (.001, .0025, .005, .01, .02, .05, .1, .25, .5, 1.0, 2.5, 10.0)
SWEEP_BUCKETS = (.001, .005, .01, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0, 30.0)


def default_socket(node: str) -> Path:
    paths.check_node_name(node)
    return RUN_DIR / "api.sock" if node == paths.DEFAULT_NODE else RUN_DIR / node / "api.sock"


def parse_address(value: str, option: str) -> Optional[tuple[str, int]]:
    """HOST:PORT (an IPv4 address or a name), or "off" for none."""
    if value == "off":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{option} must be HOST:PORT or off, not {value!r}")
    return host.strip("[]"), int(port)


class AgentMetrics:
    """The agent's own metrics: API latency, sweeps, reconciles, readiness."""

    def __init__(self, registry: Any):
        from prometheus_client import Counter, Gauge, Histogram

        self.api_latency = Histogram(
            "eniplane_agent_api_request_duration_seconds", "API requests by route, as served",
            ["method", "route", "code"], buckets=API_LATENCY_BUCKETS, registry=registry)
        self.sweep_duration = Histogram(
            "eniplane_agent_sweep_duration_seconds", "One sweep of expired flows",
            buckets=SWEEP_BUCKETS, registry=registry)
        self.swept = Counter("eniplane_agent_swept_flows_total",
                             "Expired flow entries the sweeper removed", registry=registry)
        self.reconciles = Counter(
            "eniplane_agent_reconciles_total",
            "Syncs of the maps to the store: at start, after a store change, after a failure",
            ["trigger"], registry=registry)
        self.reconcile_errors = Counter("eniplane_agent_reconcile_errors_total",
                                        "Syncs that failed (retried every second)",
                                        registry=registry)
        self.ready = Gauge("eniplane_agent_ready", "1 when the node is up and in sync",
                           registry=registry)


class StoreWatch:
    """Tells commits to state.db by other connections: SQLite's data_version, on a connection
    of its own that never writes."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                  check_same_thread=False)

    def version(self) -> int:
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    def close(self) -> None:
        self.db.close()


def bind_unix(path: Path) -> socket.socket:
    """A listening socket at path, for root only; a stale one (nobody answers) is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            raise EniplaneError(f"{path}: another agent serves it (stop it first, or use --socket)")
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)
        except OSError as e:
            raise EniplaneError(f"{path}: {e.strerror}; not a socket to replace") from None
        finally:
            probe.close()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the API changes the datapath: root's alone, from the first moment
    try:
        s.bind(str(path))
    except OSError as e:
        s.close()
        raise EniplaneError(f"cannot listen on {path}: {e.strerror}") from None
    finally:
        os.umask(old)
    s.listen(128)
    return s


def bind_tcp(addr: tuple[str, int], option: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(addr)
    except OSError as e:
        s.close()
        raise EniplaneError(f"{option} {addr[0]}:{addr[1]}: {e.strerror}") from None
    s.listen(128)
    return s


class Agent:
    def __init__(self, node: str, socket_path: Optional[Path] = None,
                 metrics_addr: Optional[tuple[str, int]] = ("127.0.0.1", 9469),
                 api_tcp: Optional[tuple[str, int]] = None,
                 sweep_interval: float = DEFAULT_SWEEP_INTERVAL,
                 tasks: Sequence[Callable[[float], None]] = (),
                 registry: Any = None,
                 on_swept: Optional[Callable[[list[dict]], None]] = None,
                 on_stop: Sequence[Callable[[], None]] = ()):
        from prometheus_client import CollectorRegistry

        self.node = paths.check_node_name(node)
        self.socket_path = socket_path or default_socket(node)
        self.metrics_addr = metrics_addr
        self.api_tcp = api_tcp
        if sweep_interval <= 0:
            raise UsageError("--sweep-interval must be a positive number of seconds")
        self.sweep_interval = sweep_interval
        self.tasks = list(tasks)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.on_swept = on_swept
        self.on_stop = list(on_stop)  # e.g. flow logs write the window in progress
        self.metrics = AgentMetrics(self.registry)
        self._told_reaper = False  # warned once that sweeps run without the kernel reaper
        self._mutex = threading.RLock()  # everything that takes the node lock
        self._stopping = False
        self._watch: Optional[StoreWatch] = None
        self._seen: Optional[int] = None  # the store's data_version the maps were synced to
        self._beat: Optional[float] = None  # when the loop last came round
        self._down = False  # the node went down while the agent ran
        self._not_ready = "starting"  # why /readyz fails; None when ready
        self._servers: list[Callable[[], None]] = []  # how to stop each
        self.metrics_port: Optional[int] = None  # the one bound (with port 0: the kernel's)

    # ---- life ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Safe from a signal handler: the loop looks at it every tenth of a second."""
        self._stopping = True

    def run(self) -> None:
        with self._only_agent():
            try:
                self._start_servers()
                with self._mutex:
                    self._bring_up()
                    self._upgrade_on_start()
                    self._sync("start")
                if not self._stopping:
                    # What starting made (FastAPI, uvicorn, pydantic's models, the store) lives
                    # as long as the agent: out of the collector's reach, a full collection no
                    # longer walks it, which cost 50-60 ms every 40 API calls or so (p99 of an
                    # attach 47 ms; 0 of 3,000 over 20 ms after).
                    gc.freeze()
                    sdnotify.notify("READY=1", f"STATUS=serving node {self.node}")
                    log.info("node %s is up and in sync; API on %s", self.node, self.socket_path)
                self._loop()
            finally:
                self._not_ready = "stopping"
                self.metrics.ready.set(0)
                sdnotify.notify("STOPPING=1")
                for stop in reversed(self._servers):
                    stop()
                if self._watch:
                    self._watch.close()
                for fn in self.on_stop:
                    try:
                        fn()
                    except Exception:  # one plug-in's failure must not keep the others
                        log.exception("stopping %s failed", getattr(fn, "__qualname__", fn))
        log.info("stopped; the datapath goes on forwarding")

    @contextmanager
    def _only_agent(self) -> Iterator[None]:
        path = paths.state_dir(self.node) / "agent.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EniplaneError(f"an agent already runs for node {self.node} "
                                    f"({lock.holder(path)})") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} eniplane agent\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def _bring_up(self) -> None:
        if nodemod.is_up(self.node):
            return
        p = ops.state(self.node).node
        if not p:
            raise EniplaneError(f"node {self.node} is not up and has no stored parameters: run "
                                f"`eniplane up --fabric-if IF --fabric-ip ADDR ...` once")
        self._not_ready = f"bringing node {self.node} up"
        log.info("node %s is not up: bringing it up on %s%s", self.node, p["fabric_if"],
                 f" in namespace {p['netns']}" if p["netns"] else "")
        _, rep = ops.up(self.node, p["fabric_if"], p["fabric_ip"], p["netns"], p["mode"],
                        p["max_flows"])
        for w in rep.warnings:
            log.warning("%s", w)

    def _upgrade_on_start(self) -> None:
        """The hitless upgrade (upgrade.py): when the running programs are not this build's
        (eniplane was updated, or an upgrade stopped half-way), swap the new ones in while the
        maps stay and packets flow. A refused upgrade (a map whose layout changed) changes
        nothing: the agent says why and serves the node as it runs."""
        from . import upgrade

        try:
            if not upgrade.needed(self.node):
                return
            rep = upgrade.upgrade(self.node)
        except EniplaneError as e:
            log.warning("the running datapath is not this build and was kept: %s", e)
            return
        log.info("upgraded node %s to build %s (programs %s)", self.node,
                 (rep["build"]["new"] or "")[:12],
                 ", ".join(f"{n} {p['old_id']}->{p['new_id']}"
                           for n, p in rep["programs"].items()))

    def _loop(self) -> None:
        next_tick = time.monotonic()
        next_sweep = next_tick + self.sweep_interval
        while not self._stopping:
            now = time.monotonic()
            if now < next_tick:
                time.sleep(min(0.1, next_tick - now))
                continue
            next_tick = now + TICK
            self._beat = now
            if self._check_node():
                self._check_store()
            if now >= next_sweep and not self._stopping:
                self._sweep()
                next_sweep = time.monotonic() + self.sweep_interval
            for task in self.tasks:
                if self._stopping:
                    break
                try:
                    task(now)
                except Exception:  # a task's failure is its own, never the agent's end
                    log.exception("periodic task %r failed", task)

    # ---- keeping the datapath as stored ------------------------------------------------------
    def _watcher(self) -> StoreWatch:
        if self._watch is None:
            from .store import Store

            Store(self.node).close()  # a node brought up without the CLI may have none yet
            self._watch = StoreWatch(paths.state_dir(self.node) / "state.db")
        return self._watch

    def _sync(self, trigger: str) -> bool:
        """Sync the maps to the store (mutex held); True when it worked."""
        from .reconcile import sync

        version = self._watcher().version()
        self.metrics.reconciles.labels(trigger).inc()
        try:
            rep = sync(self.node)
        except EniplaneError as e:
            self.metrics.reconcile_errors.inc()
            reason = f"sync failed: {e}"
            if reason != self._not_ready:
                log.error("%s (retried every second)", reason)
            self._not_ready = reason
            self.metrics.ready.set(0)
            return False
        for w in rep.warnings:
            log.warning("%s", w)
        if rep.changed and trigger != "start":
            log.info("store changed: %s", ", ".join(f"{v} {k}" for k, v in rep.changed.items()))
        self._seen = version
        self._not_ready = None
        self.metrics.ready.set(1)
        return True

    def _check_store(self) -> None:
        with self._mutex:
            if self._seen is None:
                self._sync("retry")
            elif self._watcher().version() != self._seen:
                self._sync("store")

    def _check_node(self) -> bool:
        """Is the node up? When it is not, /readyz says so; when it is back, it is synced."""
        if nodemod.is_up(self.node):
            if self._down:
                self._down = False
                self._seen = None  # back (someone ran `up`): sync it
            return True
        self._down = True
        reason = f"node {self.node} is not up (`eniplane down` ran?): the agent brings it up " \
                 f"only when it starts"
        if reason != self._not_ready:
            log.error("%s", reason)
        self._not_ready = reason
        self.metrics.ready.set(0)
        return False

    def run_change(self, fn: Callable[[], T]) -> T:
        """Run one of ops' mutations for the API. Its own commit does not call for a re-sync:
        reconcile.change programmed the maps already. The node lock is held across, so no other
        writer's commit can fall between the two looks at the store's version."""
        with self._mutex, lock.held(self.node):
            before = self._watcher().version()
            try:
                return fn()
            finally:
                if before == self._seen:
                    self._seen = self._watcher().version()

    def _sweep(self) -> None:
        from .datapath import Datapath

        if not nodemod.is_up(self.node):
            return
        removed: list[dict] = []
        t0 = time.perf_counter()
        try:
            with Datapath(self.node) as dp:
                rep = dp.sweep(removed=removed)
            if rep["reaper"] != "kernel" and not self._told_reaper:
                self._told_reaper = True
                log.warning("the node's programs predate the kernel reaper: sweeping from user "
                            "space, where a flow taken over during a sweep can see one RST "
                            "(eniplane upgrade adds it)")
        except EniplaneError as e:
            log.error("sweep failed: %s", e)
            return
        finally:
            self.metrics.sweep_duration.observe(time.perf_counter() - t0)
        self.metrics.swept.inc(len(removed))
        if removed and self.on_swept is not None:
            try:
                self.on_swept(removed)
            except Exception:
                log.exception("on_swept failed")

    # ---- health ---------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict]:
        stalled = self._beat is not None and time.monotonic() - self._beat > STALL
        doc = {"alive": not stalled, "node": self.node}
        if stalled:
            doc["reason"] = f"the agent's loop has not come round for {STALL:g} s"
        return not stalled, doc

    def readiness(self) -> tuple[bool, dict]:
        reason = self._not_ready
        doc: dict[str, Any] = {"ready": reason is None, "node": self.node}
        if reason:
            doc["reason"] = reason
        return reason is None, doc

    # ---- serving --------------------------------------------------------------------------------
    def _start_servers(self) -> None:
        sockets = [bind_unix(self.socket_path)]
        self._servers.append(lambda: self.socket_path.unlink(missing_ok=True))
        if self.api_tcp:
            sockets.append(bind_tcp(self.api_tcp, "--api-tcp"))
        if self.metrics_addr:
            self._start_metrics_server(self.metrics_addr)
        self._start_api(sockets)

    def _start_api(self, sockets: list[socket.socket]) -> None:
        import uvicorn

        from .api import ApiContext, create_app

        ctx = ApiContext(self.node, self.run_change, self.health, self.readiness,
                         self.registry, self.metrics.api_latency)
        config = uvicorn.Config(create_app(ctx), log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": sockets},
                                  name="api", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            raise EniplaneError("the API server did not start")

        def stop() -> None:
            server.should_exit = True
            thread.join(5)
            for s in sockets:
                s.close()

        self._servers.append(stop)

    def _start_metrics_server(self, addr: tuple[str, int]) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(agent.registry))
                elif path in ("/healthz", "/readyz"):
                    ok, doc = agent.health() if path == "/healthz" else agent.readiness()
                    self._send(200 if ok else 503, "application/json",
                               json.dumps(doc).encode())
                else:
                    self._send(404, "text/plain", b"not found: /metrics, /healthz, /readyz\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # Prometheus scrapes every few seconds: no line each

        try:
            httpd = ThreadingHTTPServer(addr, Handler)
        except OSError as e:
            raise EniplaneError(f"--metrics {addr[0]}:{addr[1]}: {e.strerror}") from None
        httpd.daemon_threads = True
        self.metrics_port = httpd.server_address[1]
        thread = threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True)
        thread.start()

        def stop() -> None:
            httpd.shutdown()
            httpd.server_close()

        self._servers.append(stop)
