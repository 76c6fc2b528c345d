"""A seeded fuzzer of the real server over TLS: hostile Socket.IO clients, raw malformed packets, a bystander.

The server is the product code in this process (:class:`~tests.fakes.harness.RunningServer` with a TLS
context as ``launch.py`` makes it) and the scripted fake engine. Against it run, at once:

* ``clients`` real python-socketio clients, each sending ``events_per_client`` events drawn from
  :func:`fuzz_event`: every event type (``audio``, ``frame``, ``control`` with every type, good and bad
  fields), unknown and reserved event names, sometimes with an acknowledgement, rarely a message over the
  transport limit (the server must close that connection; the client then connects again);
* ``raw_connections`` raw WebSocket connections (tests/fakes/raw_socket.py), one after the other, each
  sending one packet-level case: a known-malformed one (:data:`MALFORMED`, must be closed), one the server
  may discard (:data:`DISCARDED`, must keep working), or a random mutation of a valid packet (either);
* a bystander that talks (a fixture utterance, in real time) turn after turn while the fuzzers run; each
  turn must end with reply audio.

It records what ``tests/test_fuzz.py`` asserts and ``bench/bench_fuzz.py`` reports: events sent, ``error``
events by code (``internal`` = a server bug), tracebacks logged and exceptions escaping server threads,
connections that neither worked nor were closed ("stuck"), sessions / conversations / threads left after
the clients left, the packet guard's counts, and the RSS of this process (server and clients share it)
over time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import ssl
import string
import tempfile
import threading
import time
import traceback
import weakref
from collections import Counter, deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import socketio

from server import protocol as P
from server.options import LimitOptions, ServerOptions
from server.tls import make_self_signed, server_context
from tests.fakes.fake_engine import FakeConversation, FakeEngine, Script
from tests.fakes.harness import RunningServer, load_wav, wait_until
from tests.fakes.raw_socket import RawSocketIO, stream_oversize
from tests.fakes.soak import camera_jpeg, process_status
from tests.fakes.soak_client import until

LINGERING = ("_send_ping", "_service_task")
"""Threads that outlive a connection on purpose: Engine.IO's ping thread sleeps ``ping_interval`` (25 s)
before it sees its connection is gone; its client monitor lives as long as the server."""


@dataclass(frozen=True, slots=True)
class FuzzConfig:
    """One fuzz run."""

    seed: int = 0
    clients: int = 4
    events_per_client: int = 150
    raw_connections: int = 40
    tls: bool = True
    max_message_bytes: int = 4_000_000
    """The transport limit of the fuzzed server (lower than the default, so over-limit messages are cheap)."""
    over_limit_every: int = 400
    """About one event in this many is a message over the transport limit (0: none)."""
    reply_seconds: float = 1.0
    settle_s: float = 30.0


# ---------------------------------------------------------------- what the clients send

PLACEHOLDER = '{"_placeholder":true,"num":%s}'
MALFORMED: dict[str, tuple[list[str | bytes], str]] = {
    # name: (messages after a good CONNECT, "eio": closed by the transport with 1002 / "sio": fatal bad_packet)
    "issue-placeholder-7": (['451-["audio",' + PLACEHOLDER % 7 + "]", b"\x00\x00"], "sio"),
    "placeholder-negative": (['451-["audio",' + PLACEHOLDER % -1 + "]", b"\x00\x00"], "sio"),
    "placeholder-not-int": (['451-["audio",' + PLACEHOLDER % '"0"' + "]", b"\x00\x00"], "sio"),
    "zero-attachments": (['450-["audio",' + PLACEHOLDER % 0 + "]"], "sio"),
    "too-many-attachments": (['4599-["audio",' + PLACEHOLDER % 0 + "]"], "sio"),
    "attachment-count-overflow": (['4512345678901-["audio"]'], "sio"),
    "deep-binary-args": (['451-["audio",' + "[" * 60 + PLACEHOLDER % 0 + "]" * 60 + "]", b"\x00\x00"], "sio"),
    "text-where-attachment-due": (['451-["audio",' + PLACEHOLDER % 0 + "]", '42["control",{"type":"ping"}]'], "sio"),
    "stray-binary": ([b"\x00\x01\x02"], "sio"),
    "event-not-a-list": (['42{"type":"ping"}'], "sio"),
    "event-empty-list": (["42[]"], "sio"),
    "event-name-not-text": (["42[5]"], "sio"),
    "event-name-null": (["42[null]"], "sio"),
    "event-json-cut": (['42["control",{"type":'], "sio"),
    "event-deep-json": (['42["control",' + "[" * 100_000 + "]" * 100_000 + "]"], "sio"),
    "socketio-bad-type": (["4x"], "sio"),
    "socketio-empty": (["4"], "sio"),
    "ack-unasked": (["43[]"], "sio"),
    "binary-ack-unasked": (["461-[" + PLACEHOLDER % 0 + "]", b"\x00"], "sio"),
    "connect-error-from-client": (['44{"message":"x"}'], "sio"),
    "type-7": (["47[]"], "sio"),
    "second-connect": (["40"], "sio"),
    "other-namespace": (['42/admin,["control",{"type":"ping"}]'], "sio"),
    "json-value-not-packet": (["4true"], "sio"),
    "eio-empty": ([""], "eio"),
    "eio-not-a-type": (["x"], "eio"),
    "eio-unicode-digit": (["\u0663"], "eio"),
    "eio-bad-base64": (["bQQ"], "eio"),
    "eio-deep-json": (["4" + "[" * 100_000], "eio"),
}
"""Packet-level cases the server must answer by closing that one connection (and nothing else)."""

DISCARDED: dict[str, list[str | bytes]] = {
    "eio-noop": ["6"],
    "eio-ping-from-client": ["2"],
    "eio-unasked-pong": ["3"],
    "eio-upgrade-again": ["5"],
    "eio-probe": ["2probe"],
    "spoofed-connect-event": ['42["connect",{}]'] * 20,
    "spoofed-disconnect-event": ['42["disconnect"]'] * 5,
    "binary-event-reserved-name": ['451-["connect",' + PLACEHOLDER % 0 + "]", b"\x00\x01"],
    "unknown-event-with-ack": ['4217["mystery",1]'],
}
"""Packet-level cases the server may drop or answer with ``bad_type``: the connection must keep working."""

VALID_PACKETS: list[list[str | bytes]] = [
    ['42["control",{"type":"ping"}]'],
    ['421["control",{"type":"start"}]'],
    ['42["control",{"type":"text","text":"hello"}]'],
    ['451-["audio",' + PLACEHOLDER % 0 + "]", bytes(640)],
    ['451-["frame",' + PLACEHOLDER % 0 + "]", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"],
    ['42["control",{"type":"playback","reply_id":"x","samples":5}]'],
]
MUTATION_CHARS = string.digits + '[]{}",:-/_ \\' + "\u0663\x00"
RESERVED_NAMES = sorted(P.RESERVED_EVENTS)


def mutate(rng: random.Random, packets: list[str | bytes]) -> list[str | bytes]:
    """``packets`` with 1-3 random edits to one of its text packets (delete, insert, replace, cut, repeat)."""
    out = list(packets)
    i = rng.randrange(len(out))
    if isinstance(out[i], bytes):
        i = 0
    text = str(out[i])
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(len(text) + 1)
        op = rng.choice(("delete", "insert", "replace", "cut", "repeat"))
        if op == "delete" and text:
            text = text[:pos] + text[pos + 1 :]
        elif op == "insert":
            text = text[:pos] + rng.choice(MUTATION_CHARS) + text[pos:]
        elif op == "replace" and pos < len(text):
            text = text[:pos] + rng.choice(MUTATION_CHARS) + text[pos + 1 :]
        elif op == "cut":
            text = text[:pos]
        else:
            text = text[:pos] + text[pos : pos + rng.randint(1, 8)] * rng.randint(2, 50) + text[pos:]
    out[i] = text
    return out


def declared(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with its frame header claiming ``width`` x ``height`` (the pixels stay what they were)."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[: i + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + jpeg[i + 9 :]


@dataclass(frozen=True, slots=True)
class FuzzEvent:
    """One event a fuzzing client sends: ``name`` with ``args``, acknowledged (``call``) or not."""

    kind: str
    name: str
    args: tuple[Any, ...]
    call: bool = False
    repeat: int = 1
    """Sent this many times back to back (floods, for the rate limits)."""


class Assets:
    """Payloads the event generator draws from (made once per run)."""

    def __init__(self, max_message_bytes: int) -> None:
        self.pcm = np.zeros(320, np.int16).tobytes()  # 20 ms
        self.jpeg = camera_jpeg(320, 240)
        self.huge = declared(self.jpeg, 9000, 9000)
        i = self.jpeg.index(b"\xff\xc0")
        sof = self.jpeg[i : i + 2 + int.from_bytes(self.jpeg[i + 2 : i + 4], "big")]
        self.two_headers = self.jpeg[:i] + sof + self.huge[i:]
        self.over_limit = bytes(max_message_bytes + 1)


def _deep(depth: int) -> Any:
    value: Any = {"type": "ping"}
    for _ in range(depth):
        value = [value]
    return value


def fuzz_event(rng: random.Random, a: Assets, over_limit_every: int) -> FuzzEvent:
    """One random event (see the module docstring); ``kind`` names its family for the counts."""
    if over_limit_every and rng.randrange(over_limit_every) == 0:
        return FuzzEvent("over_limit", "audio", (a.over_limit,))
    ack = rng.random() < 0.2
    family = rng.choices(("audio", "frame", "control", "bad_control", "name", "flood"), (30, 12, 25, 20, 13, 2))[0]
    if family == "flood":
        kind, name, args, n = rng.choice([
            ("audio", "audio", (bytes(3200),), 60), ("frame", "frame", (a.jpeg,), 20),
            ("control", "control", ({"type": "ping"},), 80), ("bad_name", "mystery", (), 50),
        ])
        return FuzzEvent(f"flood:{kind}", name, args, repeat=n)
    if family == "audio":
        kind, args = rng.choice([
            ("good", (a.pcm,)), ("odd", (b"\x00" * 641,)), ("empty", (b"",)), ("oversize", (bytes(8000),)),
            ("text", ("AAAA",)), ("json", ([1, 2, 3],)), ("dict", ({"pcm": 1},)), ("none", (None,)),
            ("number", (5,)), ("two_args", (a.pcm, a.pcm)), ("no_args", ()), ("bytes_in_list", ([a.pcm],)),
        ])
        return FuzzEvent(f"audio:{kind}", "audio", args, ack)
    if family == "frame":
        kind, args = rng.choice([
            ("good", (a.jpeg,)), ("huge_dims", (a.huge,)), ("two_headers", (a.two_headers,)),
            ("garbage", (bytes(rng.randrange(256) for _ in range(64)),)), ("png", (b"\x89PNG\r\n\x1a\n" + bytes(64),)),
            ("truncated", (a.jpeg[:40],)), ("dataurl", ("data:image/jpeg;base64,/9j/",)), ("none", (None,)),
            ("zero_dims", (declared(a.jpeg, 0, 240),)),
        ])
        return FuzzEvent(f"frame:{kind}", "frame", args, ack)
    if family == "control":
        kind = rng.choice(("start", "stop", "reset", "ping", "text", "playback"))
        msg: dict[str, Any] = {"type": kind}
        if kind == "text":
            msg["text"] = rng.choice(("What is this?", "Tell me more.", "你好"))
        elif kind == "playback":
            msg.update(reply_id=rng.choice(("nope", "x-1")), samples=rng.randrange(0, 48000))
        return FuzzEvent(f"control:{kind}", "control", (msg,), ack or rng.random() < 0.3)
    if family == "bad_control":
        kind, args = rng.choice([
            ("not_object", ("start",)), ("list", ([{"type": "start"}],)), ("none", (None,)), ("empty", ({},)),
            ("type_number", ({"type": 5},)), ("unknown_type", ({"type": "launch"},)),
            ("text_missing", ({"type": "text"},)), ("text_empty", ({"type": "text", "text": "  "},)),
            ("text_number", ({"type": "text", "text": 5},)), ("text_long", ({"type": "text", "text": "x" * 3000},)),
            ("playback_negative", ({"type": "playback", "reply_id": "r", "samples": -1},)),
            ("playback_bool", ({"type": "playback", "reply_id": "r", "samples": True},)),
            ("playback_id_number", ({"type": "playback", "reply_id": 5, "samples": 1},)),
            ("playback_id_long", ({"type": "playback", "reply_id": "r" * 500, "samples": 1},)),
            ("extra_fields", ({"type": "ping", "x": [1] * 100},)), ("deep", (_deep(200),)),
            ("two_args", ({"type": "ping"}, {"type": "stop"})), ("binary", (b"\x00",)),
        ])
        return FuzzEvent(f"bad_control:{kind}", "control", args, ack)
    kind = rng.choice(("reserved", "unknown", "long", "unicode", "empty"))
    name = {
        "reserved": rng.choice(RESERVED_NAMES),
        "unknown": "".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(1, 12))),
        "long": "y" * 5000,
        "unicode": "🎤" + chr(rng.randrange(0x100, 0x3000)),
        "empty": "",
    }[kind]
    args = rng.choice([(), ({"type": "start"},), (b"\x00\x01",), (1, 2, 3)])
    return FuzzEvent(f"name:{kind}", name, args, ack)


# ---------------------------------------------------------------- clients


class AsyncRecorder:
    """A real python-socketio ``AsyncClient`` (aiohttp: the TLS socket is used by one thread, unlike the
    threaded client's websocket-client, whose reader and writer threads share one TLS connection and drop
    it now and then under load) that records every server event."""

    def __init__(self, url: str, cafile: str | None) -> None:
        self.url = url
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.changed = asyncio.Event()
        self.disconnect_reason: Any = None
        extra = {"ssl": ssl.create_default_context(cafile=cafile)} if cafile else {}
        self.sio = socketio.AsyncClient(reconnection=False, request_timeout=10, websocket_extra_options=extra)
        self.sio.on("*", self._record)
        self.sio.on("disconnect", self._on_disconnect)

    async def _record(self, event: str, *args: Any) -> None:
        self.events.append((event, args))
        self.changed.set()

    async def _on_disconnect(self, reason: Any = None) -> None:
        self.disconnect_reason = reason
        self.changed.set()

    async def connect(self) -> AsyncRecorder:
        """Connect over WebSocket only (what the page uses)."""
        await self.sio.connect(self.url, transports=["websocket"], wait_timeout=10)
        return self

    def named(self, name: str) -> list[tuple[Any, ...]]:
        """Arguments of every received event called ``name``."""
        return [args for ev, args in self.events if ev == name]

    async def wait_for(self, predicate: Any, within_s: float) -> bool:
        """Until ``predicate(self)`` holds (re-checked on every event), or ``within_s`` seconds."""
        return await until(lambda: predicate(self), self.changed, within_s)

    async def control(self, **msg: Any) -> Any:
        """A control event, acknowledged."""
        return await self.sio.call("control", msg, timeout=10)

    async def still_works(self, within_s: float = 15.0) -> bool:
        """Does the session answer a ``ping`` control (retried while a rate limit refills)?"""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and self.sio.connected:
            try:
                if (await self.sio.call("control", {"type": "ping"}, timeout=5)).get("ok"):
                    return True
            except Exception:  # noqa: BLE001 - a timeout or a closed connection: look again
                pass
            await asyncio.sleep(0.25)
        return False

    async def close(self) -> None:
        """Disconnect (idempotent)."""
        if self.sio.connected:
            await self.sio.disconnect()


CLIENT_LOGGERS = ("engineio.client", "socketio.client", "websocket", "asyncio", "aiohttp")
"""Loggers of the test clients (in this process too): their errors are not the server's."""


class Problems(logging.Handler):
    """Tracebacks and errors the server logs, and exceptions that escape any thread, while active."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.tracebacks: list[str] = []
        self.client_errors: list[str] = []
        self.thread_errors: list[str] = []
        self.warnings: Counter[str] = Counter()
        self.records: list[logging.LogRecord] = []
        self._hook = threading.excepthook
        self._level = logging.INFO

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) < 100_000:
            self.records.append(record)
        if record.levelno >= logging.WARNING:
            self.warnings[record.name] += 1
        if record.exc_info or record.levelno >= logging.ERROR:
            where = self.client_errors if record.name.startswith(CLIENT_LOGGERS) else self.tracebacks
            where.append(f"{record.name}: {record.getMessage()[:300]}")

    def lines(self, needle: str) -> list[str]:
        """Messages logged that contain ``needle``."""
        return [r.getMessage() for r in self.records if needle in r.getMessage()]

    def _on_thread_error(self, args: threading.ExceptHookArgs) -> None:
        where = traceback.extract_tb(args.exc_traceback)[-3:]
        self.thread_errors.append(f"{args.thread.name if args.thread else '?'}: {args.exc_type.__name__}: "
                                  f"{str(args.exc_value)[:200]} at {[f'{Path(f.filename).name}:{f.lineno}' for f in where]}")

    def __enter__(self) -> Problems:
        root = logging.getLogger()
        self._level = root.level
        root.setLevel(logging.INFO)
        root.addHandler(self)
        threading.excepthook = self._on_thread_error
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)
        threading.excepthook = self._hook


def peak_rss_growth_mb(action: Any) -> float | None:
    """How far this process's peak RSS rose above its RSS during ``action()``; ``None`` where the peak
    cannot be reset (``/proc/self/clear_refs``)."""

    def status() -> dict[str, int]:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    try:
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from now
    except OSError:
        action()
        return None
    before = status()
    action()
    return round((status()["VmHWM"] - before["VmRSS"]) / 1024, 1)


def over_limit_probe(total: int = 200_000_000, limit: int | None = None) -> dict[str, Any]:
    """One client announces a ``total``-byte message and streams it at a server with the default (or
    ``limit``) ``--max_message_bytes``: how much was taken, whether it was closed, the peak RSS growth."""
    limits = LimitOptions() if limit is None else LimitOptions(max_message_bytes=limit)
    with RunningServer(ServerOptions(no_tls=True, limits=limits)) as srv:
        raw = RawSocketIO(srv.url)
        raw.connect()
        sent: list[int] = []
        closed: list[bool] = []

        def attack() -> None:
            sent.append(stream_oversize(raw, total))
            closed.append(raw.wait_closed(10))

        growth = peak_rss_growth_mb(attack)
        raw.close()
        violations = srv.state.guard.stats()["violations"] if srv.state.guard else {}
    return {"announced_bytes": total, "limit_bytes": limits.max_message_bytes, "bytes_written_before_close": sent[0],
            "closed": closed[0], "close_code": raw.close_code, "peak_rss_growth_mb": growth, "violations": violations}


def server_threads() -> set[threading.Thread]:
    """Live threads, less the ones that outlive a connection on purpose (:data:`LINGERING`)."""
    return {t for t in threading.enumerate() if not t.name.endswith(tuple(f"({n})" for n in LINGERING))}


# ---------------------------------------------------------------- the run


class CountingEngine(FakeEngine):
    """The scripted fake engine, counting conversations instead of keeping them (a fuzz opens hundreds,
    and a kept conversation keeps its session, which would show up as server memory)."""

    def __init__(self, script: Script) -> None:
        super().__init__(script)
        self.opened = 0
        self._refs: list[weakref.ref[FakeConversation]] = []

    def open_conversation(self, sink: Any) -> FakeConversation:
        conv = FakeConversation(sink, self.script, requests=deque(maxlen=4))  # type: ignore[arg-type]
        self.opened += 1
        self._refs.append(weakref.ref(conv))
        return conv

    def open_count(self) -> int:
        """Conversations alive and not closed (one alive is held by its session's threads)."""
        return sum(1 for ref in self._refs if (c := ref()) is not None and not c.closed)


class _Run:
    def __init__(self, cfg: FuzzConfig, srv: RunningServer, cafile: str | None) -> None:
        self.cfg, self.srv, self.cafile = cfg, srv, cafile
        self.lock = threading.Lock()
        self.sent: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.stuck: list[str] = []
        self.accepted_connects = 0
        self.failures: list[str] = []
        self.bystander: dict[str, Any] = {"turns": 0, "with_audio": 0, "errors": [], "failed": None}
        self.samples: list[dict[str, Any]] = []

    def note_errors(self, events: list[Any]) -> None:
        with self.lock:
            self.errors.update(e["code"] for e in events if isinstance(e, dict) and "code" in e)

    async def connect(self) -> AsyncRecorder:
        c = await AsyncRecorder(self.srv.url, self.cafile).connect()
        with self.lock:
            self.accepted_connects += 1
        return c

    # --- hostile Socket.IO clients

    async def fuzz_client(self, index: int) -> None:
        rng = random.Random(self.cfg.seed * 1000 + index)
        assets = Assets(self.cfg.max_message_bytes)
        client = await self.connect()
        closed_expected = False
        try:
            for _ in range(self.cfg.events_per_client):
                if not client.sio.connected:
                    await self._finish_client(client, closed_expected)
                    client, closed_expected = await self.connect(), False
                ev = fuzz_event(rng, assets, self.cfg.over_limit_every)
                data = ev.args[0] if len(ev.args) == 1 else (ev.args if ev.args else None)
                try:
                    if ev.call and ev.kind != "over_limit":
                        await client.sio.call(ev.name, data, timeout=10)
                    else:
                        for _ in range(ev.repeat):
                            await client.sio.emit(ev.name, data)
                except socketio.exceptions.TimeoutError:
                    self.failures.append(f"no acknowledgement for {ev.kind}")
                except socketio.exceptions.SocketIOError:
                    pass  # closed meanwhile (after an over-limit message): counted at the next event
                self.sent[ev.kind] += ev.repeat
                if ev.kind == "over_limit":
                    closed_expected = True
                    if not await client.wait_for(lambda c: not c.sio.connected, 10):
                        self.stuck.append(f"client {index}: still open after a message over the limit")
                await asyncio.sleep(0)  # let the other clients (and the bystander) run
            await self._finish_client(client, closed_expected)
        except Exception as exc:  # noqa: BLE001 - recorded; the run goes on
            self.failures.append(f"client {index}: {type(exc).__name__}: {exc}")
            await client.close()

    async def _finish_client(self, client: AsyncRecorder, closed_expected: bool) -> None:
        self.note_errors([a[0] for a in client.named("error") if a])
        if client.sio.connected and await client.still_works():
            outcome = "worked"
        elif not client.sio.connected:
            outcome = "closed_expected" if closed_expected else f"closed_unexpected ({client.disconnect_reason})"
        else:
            outcome = "stuck"
            self.stuck.append("a Socket.IO fuzz client: connected but not answering")
        self.outcomes[f"socketio:{outcome}"] += 1
        await client.close()

    # --- the bystander

    async def bystander_turns(self, fuzzers: asyncio.Future[Any]) -> None:
        """Talk in real time, turn after turn, until the fuzzers are done (one turn at least)."""
        pcm = np.concatenate([load_wav("question_en"), np.zeros(16000, np.int16)])
        c = await self.connect()
        try:
            await c.control(type="start")
            turn = 0
            while turn == 0 or not fuzzers.done():
                turn += 1
                ends_before = len(c.named("reply_end"))
                t0 = time.monotonic()
                for i, off in enumerate(range(0, pcm.size, 320)):  # 20 ms packets at real time
                    await c.sio.emit("audio", pcm[off : off + 320].tobytes())
                    await asyncio.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))
                if not await c.wait_for(lambda c, n=ends_before: len(c.named("reply_end")) > n, 30):
                    self.bystander["failed"] = f"turn {turn}: no reply_end"
                    return
                end = c.named("reply_end")[-1][0]
                audio = sum(a[0]["samples"] for a in c.named("reply_audio") if a[0]["reply_id"] == end["reply_id"])
                self.bystander["turns"] += 1
                if end["reason"] == "done" and audio > 0:
                    self.bystander["with_audio"] += 1
            self.bystander["errors"] = [a[0]["code"] for a in c.named("error")]
            if not await c.still_works():
                self.bystander["failed"] = "the bystander's session stopped answering"
        finally:
            await c.close()

    async def clients(self) -> None:
        """The fuzzing clients and the bystander, in one event loop."""
        fuzzers = asyncio.gather(*(self.fuzz_client(i) for i in range(self.cfg.clients)))
        await asyncio.gather(fuzzers, self.bystander_turns(fuzzers))

    # --- raw packet-level connections

    def raw_connections(self) -> None:
        """Every known case once (shuffled), then random ones; a third of those random mutations."""
        rng = random.Random(self.cfg.seed * 1000 + 999)
        known = [(n, "closed") for n in sorted(MALFORMED)] + [(n, "works") for n in sorted(DISCARDED)]
        rng.shuffle(known)
        for i in range(self.cfg.raw_connections):
            if i < len(known):
                name, expect = known[i]
            elif rng.random() < 2 / 3:
                name, expect = "mutation", "either"
            else:
                name, expect = rng.choice(known)
            if expect == "closed":
                packets = MALFORMED[name][0]
            elif expect == "works":
                packets = DISCARDED[name]
            else:
                packets = mutate(rng, rng.choice(VALID_PACKETS))
            try:
                self.raw_case(i, name, packets, expect)
            except Exception as exc:  # noqa: BLE001 - recorded; the run goes on
                with self.lock:
                    self.failures.append(f"raw {i} {name}: {type(exc).__name__}: {exc}")

    def raw_case(self, i: int, name: str, packets: list[str | bytes], expect: str) -> None:
        raw = RawSocketIO(self.srv.url, self.cafile)
        try:
            if not raw.connect():
                with self.lock:
                    self.failures.append(f"raw {i} {name}: CONNECT refused")
                return
            with self.lock:
                self.accepted_connects += 1
            for p in packets:
                raw.send(p)
            with self.lock:
                self.sent[f"raw:{'malformed' if expect == 'closed' else name}"] += len(packets)
            works = expect != "closed" and raw.works(timeout=10)
            closed = works is False and raw.wait_closed(10)
            outcome = "worked" if works else "closed" if closed else "stuck"
            if outcome == "stuck" or (expect != "either" and outcome != {"closed": "closed", "works": "worked"}[expect]):
                with self.lock:
                    self.stuck.append(f"raw {i} {name} {[str(p)[:40] for p in packets]}: {outcome}, expected {expect}")
            with self.lock:
                self.outcomes[f"raw:{outcome}"] += 1
            self.note_errors([e[0] for e in raw.events("error") if e])
        finally:
            raw.close()

    def sample(self, t0: float) -> None:
        self.samples.append({"t": round(time.monotonic() - t0, 2), **process_status(),
                             "sessions": len(self.srv.state.sessions)})


def run_fuzz(cfg: FuzzConfig, say: Any = print) -> dict[str, Any]:
    """Run one fuzz (see the module docstring) and return its record."""
    tmp = Path(tempfile.mkdtemp(prefix="vita-fuzz-"))
    cafile = None
    ctx = None
    if cfg.tls:
        cert, key = make_self_signed(tmp, ["127.0.0.1", "localhost"])
        ctx, cafile = server_context(cert, key), str(cert)
    options = ServerOptions(no_tls=not cfg.tls, max_users=cfg.clients + 4,
                            limits=LimitOptions(max_message_bytes=cfg.max_message_bytes))
    engine = CountingEngine(Script(reply_seconds=cfg.reply_seconds))
    t0 = time.monotonic()
    try:
        with Problems() as problems:
            before = server_threads()
            srv = RunningServer(options, engine, ssl_context=ctx)
            run = _Run(cfg, srv, cafile)
            try:
                run.sample(t0)
                say(f"fuzz: {cfg.clients} clients x {cfg.events_per_client} events, {cfg.raw_connections} raw "
                    f"connections, seed {cfg.seed}, {srv.url}")
                workers = [threading.Thread(target=asyncio.run, args=(run.clients(),), name="fuzz-clients"),
                           threading.Thread(target=run.raw_connections, name="fuzz-raw")]
                for w in workers:
                    w.start()
                while any(w.is_alive() for w in workers):
                    for w in workers:
                        w.join(1.0)
                    run.sample(t0)
                serving = f"http-{srv.url.rsplit(':', 1)[1]}"  # the accept loop, until srv.stop()

                def leftover() -> list[str]:
                    return sorted(t.name for t in server_threads() - before if t.name != serving)

                settled = wait_until(lambda: not srv.state.sessions and engine.open_count() == 0
                                     and not leftover(), cfg.settle_s, 0.25)
                left = leftover()
                guard = srv.state.guard.stats() if srv.state.guard else {}
                sessions_left = len(srv.state.sessions)
            finally:
                srv.stop()
            run.sample(t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    events_sent = sum(run.sent.values())
    rss = [s["rss_mb"] for s in run.samples]
    return {
        "config": asdict(cfg),
        "summary": {
            "events_sent": events_sent,
            "errors_by_code": dict(sorted(run.errors.items())),
            "internal_errors": run.errors.get("internal", 0),
            "tracebacks": len(problems.tracebacks),
            "thread_exceptions": len(problems.thread_errors),
            "client_library_errors": len(problems.client_errors),
            "stuck_connections": len(run.stuck),
            "connections": dict(sorted(run.outcomes.items())),
            "sessions_opened": engine.opened,
            "connects_accepted": run.accepted_connects,
            "sessions_left": sessions_left,
            "conversations_open": engine.open_count(),
            "threads_left": left,
            "settled": settled,
            "bystander_turns": run.bystander["turns"],
            "bystander_turns_with_audio": run.bystander["with_audio"],
            "bystander_failed": run.bystander["failed"],
            "bystander_errors": run.bystander["errors"],
            "client_failures": run.failures[:20],
            "rss_mb": {"start": rss[0], "peak": max(rss), "end": rss[-1]},
            "seconds": round(time.monotonic() - t0, 1),
        },
        "events_by_kind": dict(sorted(run.sent.items())),
        "guard": guard,
        "stuck": run.stuck[:50],
        "tracebacks": problems.tracebacks[:20],
        "thread_exceptions": problems.thread_errors[:20],
        "client_library_errors": problems.client_errors[:20],
        "server_warnings_by_logger": dict(problems.warnings),
        "samples": run.samples,
    }
