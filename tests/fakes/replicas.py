"""Replicas behind a real load balancer: ``launch.py`` processes on loopback behind Debian's HAProxy.

The HAProxy configuration is made from the shipped ``deploy/haproxy.cfg`` (:func:`loopback_config`): the
same frontend (TLS ends at the proxy, ``X-Forwarded-Proto``), timeouts and backend (``balance leastconn``,
``option httpchk GET /readyz``); only addresses, the certificate and the check interval change, so the
tested configuration and the shipped one cannot drift apart. Each replica is a real ``launch.py --no-tls``
process with its own engine on the tiny checkpoint. Clients are python-socketio ``AsyncClient`` s over
``wss://`` through the proxy (the threaded websocket-client one drops ``wss://`` connections by itself),
run on one event loop in a background thread so tests stay synchronous.

The scenarios (:func:`spread`, :func:`full_replica_skipped`, :func:`drain_one`, :func:`kill_one`) check
what issue 11 asks for and return the measured figures; ``tests/test_replicas.py`` runs them with
assertions and ``bench/bench_replicas.py`` records their figures.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
import socketio

from tests.fakes.harness import RecordingClient

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CFG = REPO_ROOT / "deploy" / "haproxy.cfg"
BACKEND = "vita"
TEST_CHECK = "check inter 200ms fall 1 rise 1"
"""Health checks in the tests: every 200 ms, one answer flips a replica (the shipped: 2 s, 2 answers)."""
CHECK_TIMEOUT = "3s"
"""Without ``timeout check`` HAProxy gives a check only ``inter`` (200 ms) to answer, which a replica on a
loaded 2-core machine misses now and then; one miss (``fall 1``) would take it out of the pool."""
START_TIMEOUT_S = 600.0
"""Replicas start together and each loads its own engine: minutes on 2 shared cores."""
REPLY_TEXT = "Tell me about the weather."
# The page's reconnection (static/app.js: reconnectionDelay 500, max 5000); python-socketio's
# randomization is in seconds, so 0.25 gives the page's +-50 % around the first delay.
RECONNECT = {"reconnection_delay": 0.5, "reconnection_delay_max": 5.0, "randomization_factor": 0.25}

T = TypeVar("T")


def haproxy_binary() -> str | None:
    """Debian's haproxy (``/usr/sbin`` is not on every PATH), or ``None``."""
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(predicate: Callable[[], T], timeout: float, interval: float = 0.05) -> T | None:
    """``predicate()`` as soon as it is truthy, or ``None`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


# ---------------------------------------------------------------------------------- configuration


def shipped_check() -> str:
    """The health-check settings of the shipped configuration (``check inter 2s fall 2 rise 2``)."""
    found = re.search(r"^[ \t]+default-server (check(?: (?:inter|fall|rise) \S+)+)", SHIPPED_CFG.read_text(), re.M)
    if found is None:
        raise ValueError("deploy/haproxy.cfg has no `default-server check inter .. fall .. rise ..` line")
    return found[1]


def _sub(pattern: str, repl: str, text: str, expected: int | None = 1) -> str:
    """``re.subn`` that insists on ``expected`` matches (``None``: at least one)."""
    new, n = re.subn(pattern, lambda _m: repl, text, flags=re.M)
    if (n != expected) if expected is not None else n == 0:
        raise ValueError(f"deploy/haproxy.cfg changed shape: {pattern!r} matched {n} times; "
                         "update tests/fakes/replicas.py:loopback_config")
    return new


def loopback_config(shipped: str, servers: list[tuple[str, int]], https_port: int, http_port: int,
                    pem: Path, stats_socket: Path, check: str = TEST_CHECK) -> str:
    """The shipped haproxy.cfg for replicas on loopback: ports, certificate, servers, check interval and a
    stats socket change; everything else (timeouts, headers, balancing, readiness check) stays as shipped."""
    text = shipped
    # Docker's DNS: loopback replicas have fixed addresses.
    text = _sub(r"^resolvers \S+\n(?:[ \t]+\S.*\n)*", "", text)
    text = _sub(r"^[ \t]+bind :\d+ ssl crt \S+", f"    bind 127.0.0.1:{https_port} ssl crt {pem}", text)
    text = _sub(r"^[ \t]+bind :\d+[ \t]*$", f"    bind 127.0.0.1:{http_port}", text)
    text = _sub(r"^[ \t]+server \S+ \S+.*\n", "", text, expected=None)
    lines = "".join(f"    server {name} 127.0.0.1:{port}\n" for name, port in servers)
    text = _sub(r"^[ \t]+default-server .*\n", f"    default-server {check}\n{lines}", text)
    text = _sub(r"^global[ \t]*\n", f"global\n    stats socket {stats_socket} mode 600 level admin\n", text)
    return _sub(r"^defaults[ \t]*\n", f"defaults\n    timeout check {CHECK_TIMEOUT}\n", text)


# ---------------------------------------------------------------------------------- processes


class Replica:
    """One ``launch.py --no-tls`` process on a fixed loopback port (kept across restarts)."""

    def __init__(self, name: str, home: Path, args: list[str], program: str = "launch.py") -> None:
        self.name = name
        self.program = program
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = home
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        """Start the process in its own process group (its engine processes join it)."""
        env = {**os.environ, "XDG_CACHE_HOME": str(self.home / "cache"), "PYTHONUNBUFFERED": "1"}
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, self.program, "--ip", "127.0.0.1", "--port", str(self.port), "--no-tls", *self.args],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self._reader = threading.Thread(target=self._read, args=(self.proc,), name=f"replica-log-{self.name}",
                                        daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def log_tail(self, n: int = 60) -> str:
        """The last ``n`` lines it printed."""
        return "\n".join(self.lines[-n:])

    @property
    def alive(self) -> bool:
        """Whether the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def readyz(self) -> dict[str, Any] | None:
        """Its /readyz body plus ``code``, asked directly (not through the proxy); ``None`` if unreachable."""
        try:
            r = requests.get(self.url + "/readyz", timeout=5)
            return {"code": r.status_code, **r.json()}
        except (requests.RequestException, ValueError):
            return None

    def sessions(self) -> int | None:
        """Sessions it serves now, by its own count."""
        body = self.readyz()
        return None if body is None else int(body["sessions"])

    def wait_ready(self, deadline: float) -> None:
        """Block until /readyz answers 200; raise with its log if it exits or ``deadline`` passes."""
        while True:
            if not self.alive:
                raise RuntimeError(f"replica {self.name} exited ({self._code()}):\n{self.log_tail()}")
            body = self.readyz()
            if body is not None and body["code"] == 200:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {self.name} not ready in time:\n{self.log_tail()}")
            time.sleep(0.5)

    def _code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def sigterm(self) -> None:
        """SIGTERM to the server process only (as a process manager sends it): its engines serve the drain."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)

    def sigkill(self) -> None:
        """SIGKILL to the whole process group: the replica dies at once with its engines."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)

    def wait_exit(self, timeout: float) -> int:
        """Its exit code; raises ``subprocess.TimeoutExpired``."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Stop it and everything it started (idempotent)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # engine processes it left behind
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(10)


class Proxy:
    """Debian's haproxy in the foreground with a generated configuration and a stats socket."""

    def __init__(self, binary: str, home: Path, replicas: list[Replica], check: str = TEST_CHECK) -> None:
        """Write the configuration for ``replicas`` with health checks ``check``, and start haproxy."""
        from server.tls import make_self_signed

        home.mkdir(parents=True, exist_ok=True)
        cert, key = make_self_signed(home / "tls", ["127.0.0.1", "localhost"])
        self.pem = home / "vita.pem"
        self.pem.write_text(cert.read_text() + key.read_text())
        self.stats_socket = home / "haproxy.sock"
        self.https_port, self.http_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.https_port}"
        self.config = home / "haproxy.cfg"
        self.config.write_text(loopback_config(
            SHIPPED_CFG.read_text(), [(r.name, r.port) for r in replicas], self.https_port, self.http_port,
            self.pem, self.stats_socket, check))
        self.log = home / "haproxy.log"
        check = subprocess.run([binary, "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=60)
        if check.returncode != 0:
            raise RuntimeError(f"generated haproxy.cfg is invalid:\n{check.stdout}{check.stderr}")
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(self.config)], stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        if not poll(lambda: self.proc.poll() is not None or self._stats_ok(), 30):
            raise RuntimeError("haproxy did not open its stats socket")
        if self.proc.poll() is not None:
            raise RuntimeError(f"haproxy exited:\n{self.log.read_text()}")

    def _stats_ok(self) -> bool:
        try:
            self.stats()
        except OSError:
            return False
        return True

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` for the backend's servers: name -> row (``status``, ``scur``, ``stot``, ...)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(b"show stat\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        return {row["svname"]: row for row in csv.DictReader(io.StringIO(text))
                if row["pxname"] == BACKEND and row["svname"] not in ("BACKEND", "FRONTEND")}

    def status(self, name: str) -> str:
        """``UP`` or ``DOWN`` (HAProxy adds the transition, e.g. ``UP 1/2``: only the first word counts)."""
        return self.stats()[name]["status"].split()[0]

    def wait_status(self, name: str, status: str, timeout: float) -> float:
        """Block until the proxy has ``name`` in ``status``; the monotonic time it was first seen."""
        seen = poll(lambda: time.monotonic() if self.status(name) == status else None, timeout, interval=0.02)
        if seen is None:
            raise AssertionError(f"haproxy has {name} {self.status(name)}, not {status}, after {timeout} s")
        return seen

    def wait_healthy(self, name: str, timeout: float) -> None:
        """Block until ``name`` is UP with full health: a server that has just come up (``UP 1/2``) goes
        DOWN on its first failed check, one in full health only after ``fall`` of them."""
        if poll(lambda: self.stats()[name]["status"] == "UP", timeout, interval=0.1) is None:
            raise AssertionError(f"haproxy has {name} {self.stats()[name]['status']} after {timeout} s")

    def stop(self) -> None:
        """Stop haproxy (idempotent)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# ---------------------------------------------------------------------------------- clients


class ClientLoop:
    """One asyncio loop in a background thread for every client (the tests themselves stay synchronous)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="replica-clients", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Client:
    """A Socket.IO client over WebSocket that records every event with its arrival time."""

    def __init__(self, loop: ClientLoop, url: str, reconnect: bool = False) -> None:
        self._loop = loop
        self.url = url
        self.sio = socketio.AsyncClient(reconnection=reconnect, ssl_verify=False, request_timeout=10,
                                        **(RECONNECT if reconnect else {}))
        self.events: list[tuple[float, str, tuple[Any, ...]]] = []
        self.disconnects: list[float] = []
        self.refused: str | None = None
        self.connect_errors = 0
        """Failed connection attempts (reconnection attempts included)."""
        self._cond = threading.Condition()
        self.sio.on("*", self._record)
        self.sio.on("disconnect", self._on_disconnect)
        self.sio.on("connect_error", self._on_refused)

    def connect(self) -> Client:
        """Connect (WebSocket only, as the page does); raises ``socketio.exceptions.ConnectionError``."""
        self._loop.run(self.sio.connect(self.url, transports=["websocket"], wait_timeout=10))
        return self

    def _record(self, event: str, *args: Any) -> None:
        with self._cond:
            self.events.append((time.monotonic(), event, args))
            self._cond.notify_all()

    def _on_disconnect(self, *_reason: Any) -> None:
        with self._cond:
            self.disconnects.append(time.monotonic())
            self._cond.notify_all()

    def _on_refused(self, data: Any = None) -> None:
        with self._cond:
            self.refused = str(data.get("message", data)) if isinstance(data, dict) else str(data)
            self.connect_errors += 1
            self._cond.notify_all()

    def times(self, name: str) -> list[float]:
        """When each ``name`` event arrived."""
        with self._cond:
            return [t for t, ev, _ in self.events if ev == name]

    def named(self, name: str) -> list[tuple[Any, ...]]:
        """Arguments of every ``name`` event."""
        with self._cond:
            return [args for _, ev, args in self.events if ev == name]

    def wait_for(self, predicate: Callable[[Client], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` holds (re-checked on every event and disconnect)."""
        with self._cond:
            return bool(self._cond.wait_for(lambda: predicate(self), timeout))

    def control(self, **msg: Any) -> Any:
        """A control event and its acknowledgement."""
        return self._loop.run(self.sio.call("control", msg, timeout=10))

    def close(self) -> None:
        """Disconnect and stop reconnecting (idempotent)."""
        try:
            self._loop.run(self.sio.shutdown(), timeout=15)
        except Exception:  # a client of a killed replica may be mid-reconnect: it is stopped either way
            pass


# ---------------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    """``replicas`` launch.py processes behind one haproxy, and the clients the scenarios opened."""

    home: Path
    replicas: int = 3
    max_users: int = 2
    drain_s: float = 120.0
    # One engine each: three replicas must fit 2 cores. No waiting room: a client that reaches a full
    # replica (which the proxy must prevent) is refused at once instead of waiting unseen in its queue.
    extra_args: tuple[str, ...] = ("--num_engines", "1", "--awakening", "always", "--queue_size", "0")
    program: str = "launch.py"
    """What each replica runs (relative to the repository root, or absolute)."""
    members: list[Replica] = field(default_factory=list)
    proxy: Proxy | None = None
    loop: ClientLoop | None = None
    clients: list[Client] = field(default_factory=list)

    def start(self, binary: str) -> Cluster:
        """Start every replica (together), wait until each is ready, then start haproxy in front."""
        from server.cli import tiny_checkpoint

        tiny = tiny_checkpoint(self.home / "tiny")  # written once here, not raced by the replicas
        args = ["--tiny_dir", str(tiny), "--max_users", str(self.max_users), "--drain_s", str(self.drain_s),
                *self.extra_args]
        self.members = [Replica(f"vita-{i + 1}", self.home / f"vita-{i + 1}", args, self.program)
                        for i in range(self.replicas)]
        self.loop = ClientLoop()
        for r in self.members:
            r.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        for r in self.members:
            r.wait_ready(deadline)
        self.proxy = Proxy(binary, self.home / "haproxy", self.members)
        for r in self.members:
            self.proxy.wait_status(r.name, "UP", 30)
        return self

    def replica(self, name: str) -> Replica:
        """The member called ``name``."""
        return next(r for r in self.members if r.name == name)

    def live(self) -> list[Replica]:
        """Members whose process runs."""
        return [r for r in self.members if r.alive]

    def ensure_live(self, n: int) -> None:
        """Restart dead members until at least ``n`` run (a test run on its own needs all of them)."""
        assert self.proxy is not None
        for r in self.members:
            if len(self.live()) >= n:
                return
            if not r.alive:
                r.stop()
                r.start()
                r.wait_ready(time.monotonic() + START_TIMEOUT_S)
                self.proxy.wait_status(r.name, "UP", 30)

    def sessions(self) -> dict[str, int]:
        """Sessions per live replica, by each replica's own /readyz."""
        out = {}
        for r in self.live():
            n = r.sessions()
            if n is not None:
                out[r.name] = n
        return out

    def settle(self, timeout: float = 60) -> None:
        """Close every client; wait until the live replicas have no sessions and haproxy has them UP."""
        self.close_clients()
        assert self.proxy is not None
        proxy = self.proxy
        live = self.live()

        def idle() -> bool:
            return all(r.sessions() == 0 for r in live) and all(proxy.status(r.name) == "UP" for r in live)

        if not poll(idle, timeout, interval=0.1):
            raise AssertionError(f"replicas not idle: {self.sessions()}, {proxy.stats()}")

    def client(self, url: str | None = None, reconnect: bool = False) -> Client:
        """A new (unconnected) client of the proxy, or of ``url``; closed by :meth:`close_clients`."""
        assert self.loop is not None and self.proxy is not None
        c = Client(self.loop, url or self.proxy.url, reconnect)
        self.clients.append(c)
        return c

    def connect(self, reconnect: bool = False, timeout: float = 30) -> tuple[Client, str]:
        """A client connected through the proxy, and the replica its session landed on.

        Which replica: the one whose own session count went up (connect one client at a time)."""
        before = self.sessions()
        c = self.client(reconnect=reconnect).connect()
        if not c.wait_for(lambda c: bool(c.named("hello")), timeout):
            raise AssertionError(f"no hello through the proxy: {c.events[-5:]}")

        def landed() -> str | None:
            now = self.sessions()
            grew = [name for name, n in now.items() if n == before.get(name, 0) + 1]
            return grew[0] if len(grew) == 1 and sum(now.values()) == sum(before.values()) + 1 else None

        name = poll(landed, timeout)
        if name is None:
            raise AssertionError(f"cannot tell where the session landed: {before} -> {self.sessions()}")
        return c, name

    def close_clients(self) -> None:
        """Close every client opened so far."""
        for c in self.clients:
            c.close()
        self.clients = []

    def stop(self) -> None:
        """Stop clients, haproxy and every replica (idempotent)."""
        self.close_clients()
        if self.proxy is not None:
            self.proxy.stop()
        for r in self.members:
            r.stop()
        if self.loop is not None:
            self.loop.close()
            self.loop = None


# ---------------------------------------------------------------------------------- scenarios


def spread(cluster: Cluster) -> dict[str, Any]:
    """Fill every live replica through the proxy, one client at a time: leastconn must share them evenly,
    and once all are full (all DOWN) the proxy itself refuses the next client."""
    assert cluster.proxy is not None
    cluster.settle()
    live = cluster.live()
    landed = [cluster.connect()[1] for _ in range(cluster.max_users * len(live))]
    per_replica = {r.name: landed.count(r.name) for r in live}
    assert per_replica == {r.name: cluster.max_users for r in live}, landed
    # Every round of len(live) connections visits every replica once.
    rounds = [sorted(landed[i:i + len(live)]) for i in range(0, len(landed), len(live))]
    assert all(rnd == sorted(r.name for r in live) for rnd in rounds), landed
    stats = cluster.proxy.stats()
    scur = {r.name: int(stats[r.name]["scur"]) for r in live}
    assert scur == per_replica, (scur, per_replica)
    for r in live:
        cluster.proxy.wait_status(r.name, "DOWN", 30)
    extra = cluster.client()
    try:
        extra.connect()
        refused_by_proxy = False
    except socketio.exceptions.ConnectionError:
        refused_by_proxy = True
    assert refused_by_proxy, "a client got in while every replica was full"
    assert cluster.sessions() == per_replica
    cluster.settle()
    return {"order": landed, "sessions_per_replica": per_replica, "proxy_scur": scur,
            "extra_client_refused_by_proxy": refused_by_proxy}


def full_replica_skipped(cluster: Cluster) -> dict[str, Any]:
    """Fill the first replica directly (bypassing the proxy): once /readyz says 503 it must get no session
    through the proxy although it has the fewest proxied connections; freed, it comes back."""
    assert cluster.proxy is not None
    proxy = cluster.proxy
    cluster.settle()
    live = cluster.live()
    full, others = live[0], live[1:]
    for _ in range(cluster.max_users):
        c = cluster.client(full.url).connect()
        assert c.wait_for(lambda c: bool(c.named("hello")), 30)
    filled = time.monotonic()
    body = full.readyz()
    assert body is not None and body["code"] == 503 and body["not_ready"] == ["full"], body
    full_to_down = proxy.wait_status(full.name, "DOWN", 30) - filled
    stot_before = int(proxy.stats()[full.name]["stot"])
    landed = [cluster.connect()[1] for _ in range(cluster.max_users * len(others))]
    assert full.name not in landed, landed
    assert {n: landed.count(n) for n in set(landed)} == {r.name: cluster.max_users for r in others}, landed
    assert int(proxy.stats()[full.name]["stot"]) == stot_before and full.sessions() == cluster.max_users
    cluster.close_clients()
    freed = time.monotonic()
    freed_to_up = proxy.wait_status(full.name, "UP", 60) - freed
    cluster.settle()
    return {"full_replica": full.name, "landed_elsewhere": landed, "full_to_proxy_down_s": round(full_to_down, 3),
            "freed_to_proxy_up_s": round(freed_to_up, 3)}


def drain_one(cluster: Cluster) -> dict[str, Any]:
    """SIGTERM the replica of a client whose reply is playing: the reply finishes, new clients go to the
    others, the replica exits 0. Times from the signal: proxy DOWN, reply end, exit."""
    assert cluster.proxy is not None
    proxy = cluster.proxy
    cluster.settle()
    live = cluster.live()
    assert len(live) >= 2, "a drain needs another replica to take the newcomers"
    placed = [cluster.connect() for _ in live]
    talker, victim_name = placed[-1]
    victim = cluster.replica(victim_name)
    assert talker.control(type="text", text=REPLY_TEXT)["ok"]
    assert talker.wait_for(lambda c: bool(c.named("reply_audio")), 180), talker.events[-5:]
    sent = time.monotonic()
    victim.sigterm()
    down = proxy.wait_status(victim.name, "DOWN", 30)  # first: the client's events keep their own times
    assert talker.wait_for(lambda c: bool(c.named("server_draining")), 30), talker.events[-5:]
    body = victim.readyz()
    assert body is not None and body["code"] == 503 and body["draining"], body
    newcomers = [cluster.connect()[1] for _ in range(len(live) - 1)]
    assert victim.name not in newcomers, newcomers
    assert "shutting down" in (_refused_directly(victim.url) or ""), "a draining replica took a newcomer"
    assert talker.wait_for(lambda c: bool(c.named("reply_end")), cluster.drain_s + 30), talker.events[-5:]
    reply_end = talker.times("reply_end")[0]
    (end,) = talker.named("reply_end")[0]
    assert end["reason"] == "done" and not talker.named("error"), talker.named("reply_end")
    code = victim.wait_exit(cluster.drain_s + 60)
    exited = time.monotonic()
    assert code == 0, victim.log_tail()
    assert poll(lambda: any("drained in" in ln for ln in victim.lines), 10), victim.log_tail()
    assert victim.proc is not None and poll(lambda: _group_gone(victim.proc.pid), 15), "its engines outlived it"
    assert talker.wait_for(lambda c: bool(c.disconnects), 10)
    others_untouched = all(not c.disconnects for c, _ in placed[:-1])
    assert others_untouched
    victim.stop()
    cluster.settle()
    return {"replica": victim.name, "exit_code": code, "newcomers_on": newcomers, "reply_end_reason": end["reason"],
            "sigterm_to_proxy_down_s": round(down - sent, 3), "sigterm_to_reply_end_s": round(reply_end - sent, 3),
            "sigterm_to_exit_s": round(exited - sent, 3)}


def _refused_directly(url: str) -> str | None:
    """Connect straight to a replica (past the proxy); what it said when it refused (``None``: it took us)."""
    client = RecordingClient(url)
    try:
        client.connect()
    except socketio.exceptions.ConnectionError:
        return client.refused or "refused without a reason"
    finally:
        client.close()
    return None


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def kill_one(cluster: Cluster) -> dict[str, Any]:
    """SIGKILL a replica with a reconnecting client: the client reconnects through the proxy and gets a
    session on another replica. Times from the kill: the client sees the drop, gets its new hello."""
    assert cluster.proxy is not None
    proxy = cluster.proxy
    cluster.settle()
    live = cluster.live()
    assert len(live) >= 2, "a reconnect needs another replica"
    placed = [cluster.connect(reconnect=True) for _ in live]
    client, victim_name = placed[-1]
    victim = cluster.replica(victim_name)
    before = {name: n for name, n in cluster.sessions().items() if name != victim.name}
    killed = time.monotonic()
    victim.sigkill()
    down = proxy.wait_status(victim.name, "DOWN", 30)  # first: the client's events keep their own times
    assert client.wait_for(lambda c: bool(c.disconnects), 30), "the client did not notice the kill"
    assert client.wait_for(lambda c: len(c.named("hello")) >= 2, 60), client.events[-5:]
    dropped, rehello = client.disconnects[0], client.times("hello")[1]
    assert victim.wait_exit(30) == -signal.SIGKILL

    def moved_to() -> str | None:
        now = {name: n for name, n in cluster.sessions().items() if name != victim.name}
        grew = [name for name in now if now[name] == before.get(name, 0) + 1]
        return grew[0] if len(grew) == 1 and sum(now.values()) == sum(before.values()) + 1 else None

    target = poll(moved_to, 30)
    assert target is not None, (before, cluster.sessions())
    assert all(not c.disconnects for c, _ in placed[:-1]), "a client of another replica was dropped"
    # Connections the proxy still sent to the dead replica (before its checks failed): failed, retried,
    # redispatched to another replica.
    row = proxy.stats()[victim.name]
    victim.stop()
    cluster.settle()
    return {"replica": victim.name, "reconnected_to": target, "kill_to_disconnect_s": round(dropped - killed, 3),
            "kill_to_proxy_down_s": round(down - killed, 3), "kill_to_reconnected_s": round(rehello - killed, 3),
            "failed_reconnects": client.connect_errors, "proxy_connect_errors": int(row["econ"] or 0),
            "proxy_retries": int(row["wretr"] or 0), "proxy_redispatches": int(row["wredis"] or 0)}
