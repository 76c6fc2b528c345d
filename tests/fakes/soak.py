"""A soak of the real server: N looping voice+camera clients for minutes, over ``wss://`` by default.

The server is the product code in this process (:class:`~tests.fakes.harness.RunningServer`, TLS context
as ``launch.py`` makes it), with the scripted fake engine answering every turn with reply audio. The
clients run in a child process (:mod:`tests.fakes.soak_client`), so the RSS and thread counts sampled
here are the server's own. Used by ``bench/bench_soak.py`` (long runs, JSON + plot) and by
``tests/test_soak_tls.py`` (a bounded run with assertions).

What it records: connections dropped without the client asking, lost turns, replies that never ended
or lost audio, ``error`` events by code, server RSS / threads / open sessions over time, exceptions
that escaped a server thread (e.g. ``ssl.SSLError [SSL: BAD_LENGTH]`` in Engine.IO's writer) and the
warnings the server logged. After the clients leave it waits for the server to settle (sessions closed,
per-connection threads gone) and samples once more.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import ssl
import sys
import tempfile
import threading
import time
import traceback
import weakref
from collections import Counter, deque
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.interface import REPLY_SAMPLE_RATE, EventSink
from server.options import ServerOptions
from server.tls import make_self_signed, server_context
from tests.fakes.fake_engine import FakeConversation, FakeEngine, Script
from tests.fakes.harness import RunningServer, load_wav, manifest
from tests.fakes.sequence_check import checking_sequences
from tests.fakes.soak_client import ClientPlan, Utterance, client_process

UTTERANCES = ("question_en", "question_zh", "two_turns")
KEPT_THREADS = 1
"""Threads the server gains for good: Engine.IO starts its client-monitor thread (``_service_task``) on
the first connection and keeps it."""


@dataclass(frozen=True, slots=True)
class SoakConfig:
    """One soak run."""

    clients: int = 8
    minutes: float = 30.0
    tls: bool = True
    sample_s: float = 300.0
    reply_seconds: float = 3.0
    turns_per_session: int = 8
    """Turns before a client disconnects and connects again (0: one connection for the whole run)."""
    barge_every: int = 3
    text_every: int = 5
    turn_timeout_s: float = 20.0
    ws_ping_s: float = 0.0
    """Seconds between WebSocket-level pings from each client (0: none, like browsers)."""
    settle_s: float = 60.0
    """How long the server may take to close sessions and end per-connection threads after the clients
    left (Engine.IO's ping thread of a connection sleeps ``ping_interval`` = 25 s before it notices)."""
    seed: int = 0


def process_status() -> dict[str, float]:
    """This process's resident memory (MiB) and OS thread count, from ``/proc/self/status``."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            fields[key] = int(value.split()[0])
    return {"rss_mb": round(fields["VmRSS"] / 1024, 1), "threads": fields["Threads"]}


def camera_jpeg(width: int = 640, height: int = 480) -> bytes:
    """A textured 640x480 JPEG, about the size a webcam frame has at quality 70 (tens of KB)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1)
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = BytesIO()
    Image.fromarray(noisy, "RGB").save(buf, "JPEG", quality=70)
    return buf.getvalue()


class _SoakEngine(FakeEngine):
    """The scripted fake engine without its unbounded recording (a soak would keep every utterance),
    and with a count of the conversations that were opened and not closed."""

    def __init__(self, script: Script) -> None:
        super().__init__(script)
        self._opened: list[weakref.ref[FakeConversation]] = []

    def open_conversation(self, sink: EventSink) -> FakeConversation:
        # a bounded deque where the fake keeps a list: it only ever appends (and tests read the last few)
        conv = FakeConversation(sink, self.script, requests=deque(maxlen=4))  # type: ignore[arg-type]
        self._opened.append(weakref.ref(conv))
        return conv

    def open_count(self) -> int:
        """Conversations still open (alive and not closed)."""
        return sum(1 for ref in self._opened if (c := ref()) is not None and not c.closed)


class _Problems(logging.Handler):
    """Collects, for the run's duration, exceptions that escape any thread and warnings logged."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread_errors: list[dict[str, Any]] = []
        self.warnings: Counter[str] = Counter()
        self.examples: list[str] = []
        self._previous_hook = threading.excepthook
        self._t0 = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        self.warnings[f"{record.name}:{record.levelname}"] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{record.name}: {record.getMessage()[:300]}")

    def _hook(self, args: threading.ExceptHookArgs) -> None:
        tb = traceback.extract_tb(args.exc_traceback)
        self.thread_errors.append({
            "t": round(time.monotonic() - self._t0, 1),
            "thread": args.thread.name if args.thread else None,
            "type": args.exc_type.__name__,
            "message": str(args.exc_value)[:300],
            "where": [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in tb[-4:]],
        })
        self._previous_hook(args)

    def __enter__(self) -> _Problems:
        threading.excepthook = self._hook
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)
        threading.excepthook = self._previous_hook


def _sample(t0: float, srv: RunningServer, engine: _SoakEngine) -> dict[str, Any]:
    return {"t": round(time.monotonic() - t0, 1), **process_status(), "py_threads": threading.active_count(),
            "sessions": len(srv.state.sessions), "conversations_open": engine.open_count()}


def _plan(cfg: SoakConfig, url: str) -> ClientPlan:
    truth = manifest()
    utterances = tuple(Utterance(n, load_wav(n), len(truth[n]["speech"])) for n in UTTERANCES)
    return ClientPlan(
        url=url, clients=cfg.clients, seconds=cfg.minutes * 60, utterances=utterances, jpeg=camera_jpeg(),
        reply_samples=round(cfg.reply_seconds * REPLY_SAMPLE_RATE), turns_per_session=cfg.turns_per_session,
        barge_every=cfg.barge_every, text_every=cfg.text_every, turn_timeout_s=cfg.turn_timeout_s, ws_ping_s=cfg.ws_ping_s,
        seed=cfg.seed,
    )


def _run_clients(plan: ClientPlan, on_tick: Any, overrun_s: float) -> dict[str, Any]:
    """Run the clients' child process; ``on_tick()`` is called about once a second meanwhile."""
    mp = multiprocessing.get_context("spawn")  # never fork a process that runs server threads
    receiver, sender = mp.Pipe(duplex=False)
    proc = mp.Process(target=client_process, args=(plan, sender), name="soak-clients", daemon=True)
    proc.start()
    sender.close()
    give_up = time.monotonic() + plan.seconds + overrun_s
    result: dict[str, Any] | None = None
    while result is None:
        if receiver.poll(1.0):
            try:
                result = receiver.recv()
            except EOFError:
                result = {"failed": f"client process ended without a result (exit code {proc.exitcode})"}
        elif time.monotonic() > give_up:
            proc.terminate()
            result = {"failed": f"clients still running {overrun_s:g} s after the soak's end; terminated"}
        on_tick()
    proc.join(15)
    if proc.is_alive():
        proc.kill()
        proc.join(5)
    return result


def run_soak(cfg: SoakConfig, say: Any = print) -> dict[str, Any]:
    """Run one soak and return its record (see the module docstring); ``say`` prints progress."""
    tmp = Path(tempfile.mkdtemp(prefix="vita-soak-"))
    ctx = server_context(*make_self_signed(tmp, ["127.0.0.1", "localhost"])) if cfg.tls else None
    engine = _SoakEngine(Script(reply_seconds=cfg.reply_seconds))
    options = ServerOptions(no_tls=not cfg.tls, max_users=cfg.clients + 1)
    srv = RunningServer(options, engine, ssl_context=ctx)
    samples: list[dict[str, Any]] = []
    try:
        with _Problems() as problems, checking_sequences() as sequences:
            t0, t0_wall = time.monotonic(), time.time()
            start_threads = {t.ident for t in threading.enumerate()}
            samples.append({**_sample(t0, srv, engine), "phase": "start"})
            say(f"soak: {cfg.clients} clients, {cfg.minutes:g} min, {srv.url}; start {samples[-1]}")
            next_sample = t0 + cfg.sample_s

            def tick() -> None:
                nonlocal next_sample
                if time.monotonic() >= next_sample:
                    samples.append({**_sample(t0, srv, engine), "phase": "run"})
                    say(f"soak: {samples[-1]}")
                    next_sample += cfg.sample_s

            clients = _run_clients(_plan(cfg, srv.url), tick, overrun_s=180)
            samples.append({**_sample(t0, srv, engine), "phase": "clients_left"})
            start = samples[0]
            settled = _wait(lambda: _settled(srv, engine, start), cfg.settle_s)
            samples.append({**_sample(t0, srv, engine), "phase": "end"})
            left = [t.name for t in threading.enumerate() if t.ident not in start_threads]
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"soak: end {samples[-1]}")
    record = _record(cfg, samples, clients, problems, settled, left, t0_wall)
    record["server_sequences"] = sequences.report()
    return record


def _settled(srv: RunningServer, engine: _SoakEngine, start: dict[str, Any]) -> bool:
    now = process_status()
    return (not srv.state.sessions and engine.open_count() == 0
            and threading.active_count() <= start["py_threads"] + KEPT_THREADS
            and now["threads"] <= start["threads"] + KEPT_THREADS)


def _wait(predicate: Any, timeout: float) -> float | None:
    """Seconds until ``predicate()`` held, or None if it did not within ``timeout``."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(0.5)
    return round(time.monotonic() - t0, 1)


def _record(cfg: SoakConfig, samples: list[dict[str, Any]], clients: dict[str, Any], problems: _Problems,
            settled: float | None, new_threads: list[str], t0_wall: float) -> dict[str, Any]:
    per_client = clients.get("clients", [])
    totals: dict[str, Any] = {}
    for c in per_client:
        for key, value in c.items():
            if isinstance(value, int) and key != "client":
                totals[key] = totals.get(key, 0) + value
            elif isinstance(value, dict) and key != "verdict_ms":
                totals.setdefault(key, Counter()).update(value)
    totals = {k: dict(v) if isinstance(v, Counter) else v for k, v in totals.items()}
    drops = sorted(({"client": c["client"], "t": round(d["t"] - t0_wall, 1), "reason": d["reason"]}
                    for c in per_client for d in c["drops"]), key=lambda d: d["t"])
    lost = sorted(({"client": c["client"], **x, "t": round(x["t"] - t0_wall, 1)}
                   for c in per_client for x in c["lost"]), key=lambda x: x["t"])
    for c in per_client:
        c["drops"], c["lost"] = len(c["drops"]), len(c["lost"])
    errors = problems.thread_errors
    start, end = samples[0], samples[-1]
    return {
        "config": asdict(cfg),
        "versions": {"python": sys.version.split()[0], "openssl": ssl.OPENSSL_VERSION},
        "client_failure": clients.get("failed"),
        "client_task_errors": clients.get("client_task_errors", {}),
        "summary": {
            "dropped_connections": len(drops),
            "lost_turns": totals.get("lost_turns", 0),
            "turns": totals.get("turns", 0),
            "stalled_replies": totals.get("stalled_replies", 0),
            "incomplete_audio": totals.get("incomplete_audio", 0),
            "seq_gaps": totals.get("seq_gaps", 0),
            "bad_messages": totals.get("bad_messages", 0) + sum(clients.get("client_task_errors", {}).values()),
            "ack_timeouts": totals.get("ack_timeouts", 0),
            "errors": totals.get("errors", {}),
            "server_thread_exceptions": len(errors),
            "bad_length": sum("BAD_LENGTH" in e["message"] for e in errors),
            "rss_mb": [start["rss_mb"], end["rss_mb"]],
            "threads": [start["threads"], end["threads"]],
            "py_threads": [start["py_threads"], end["py_threads"]],
            "sessions_left": end["sessions"],
            "conversations_left": end["conversations_open"],
            "settled_after_s": settled,
        },
        "totals": totals,
        "drops": drops,
        "lost": lost,
        "samples": samples,
        "threads_not_there_at_start": new_threads,
        "server_thread_exceptions": errors[:50],
        "server_warnings": dict(problems.warnings),
        "server_warning_examples": problems.examples,
        "clients": per_client,
    }

