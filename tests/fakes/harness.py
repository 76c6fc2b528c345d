"""Helpers for end-to-end server tests: a real server in a thread, real Socket.IO clients, fixture audio."""

from __future__ import annotations

import functools
import json
import threading
import time
import wave
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import socketio

from server.app import create_app, server_state
from server.options import ServerOptions
from server.serving import ServerThread, build_server
from tests.fakes.fake_engine import FakeEngine
from tests.fakes.loop_client import LoopClient

SPEECH_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "speech"


def load_wav(name: str) -> np.ndarray:
    """A fixture WAV (16 kHz mono PCM16) as int16 samples."""
    with wave.open(str(SPEECH_DIR / f"{name}.wav"), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (for server-side state a client cannot observe)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def manifest() -> dict[str, Any]:
    """Ground-truth speech boundaries of the fixtures."""
    return json.loads((SPEECH_DIR / "manifest.json").read_text())


def true_turns(spans: list[dict[str, float]], gap_s: float) -> list[tuple[float, float]]:
    """A fixture's true turns: speech spans closer than the end-of-turn silence ``gap_s`` are one turn."""
    turns: list[list[float]] = []
    for span in spans:
        if turns and span["start"] - turns[-1][1] < gap_s:
            turns[-1][1] = span["end"]
        else:
            turns.append([span["start"], span["end"]])
    return [(a, b) for a, b in turns]


class RunningServer:
    """create_app + a Werkzeug server on a free port, in a background thread."""

    def __init__(self, options: ServerOptions | None = None, engine: FakeEngine | None = None, ssl_context=None,
                 port: int = 0):
        """``port``: 0 picks a free one; a fixed one lets a test restart a server where clients expect it."""
        self.options = options or ServerOptions(no_tls=True)
        self.engine = engine or FakeEngine()
        self.app = create_app(self.options, self.engine)
        self.state = server_state(self.app)
        self._thread = ServerThread(build_server(self.app, "127.0.0.1", port, ssl_context))
        scheme = "http" if ssl_context is None else "https"
        self.url = f"{scheme}://127.0.0.1:{self._thread.port}"

    def stop(self) -> None:
        """Stop serving and close every session."""
        self._thread.stop()
        self.state.close_all()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def with_options(self, **changes: Any) -> ServerOptions:
        """A copy of the options (for building another server)."""
        return replace(self.options, **changes)


class RecordingClient:
    """A real python-socketio client that records every server event in arrival order."""

    def __init__(self, url: str) -> None:
        """Over ``https`` the client accepts the server's self-signed certificate and runs on
        :class:`LoopClient` (the threaded client's TLS socket is not safe to share between its threads)."""
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.refused: str | None = None
        self._cond = threading.Condition()
        self.sio: Any = (LoopClient(reconnection=False, ssl_verify=False) if url.startswith("https:")
                         else socketio.Client(reconnection=False))
        self.sio.on("*", self._record)
        self.sio.on("connect_error", self._on_refused)
        self.url = url

    def connect(self) -> RecordingClient:
        """Connect over WebSocket only (what the page uses)."""
        self.sio.connect(self.url, transports=["websocket"], wait_timeout=10)
        return self

    def _record(self, event: str, *args: Any) -> None:
        with self._cond:
            self.events.append((event, args))
            self._cond.notify_all()

    def _on_refused(self, data: Any = None) -> None:
        with self._cond:
            self.refused = (data or {}).get("message", str(data)) if isinstance(data, dict) else str(data)
            self._cond.notify_all()

    def named(self, name: str) -> list[tuple[Any, ...]]:
        """Arguments of every received event called ``name``."""
        with self._cond:
            return [args for ev, args in self.events if ev == name]

    def wait_for(self, predicate, timeout: float = 15.0) -> bool:
        """Block until ``predicate(self)`` is true (re-checked on every received event)."""
        with self._cond:
            return bool(self._cond.wait_for(lambda: predicate(self), timeout))

    def control(self, **msg: Any) -> Any:
        """Send a control event and wait for its acknowledgement."""
        return self.sio.call("control", msg, timeout=10)

    def stream(
        self, pcm: np.ndarray, packet_ms: int = 20, speed: float = 1.0, frame: bytes | None = None,
        frame_every_ms: int = 500,
    ) -> None:
        """Send ``pcm`` as mic packets paced at ``speed`` x real time, and ``frame`` every ``frame_every_ms``."""
        n = 16 * packet_ms
        t0 = time.monotonic()
        for i, off in enumerate(range(0, pcm.size, n)):
            if frame is not None and (i * packet_ms) % frame_every_ms == 0:
                self.sio.emit("frame", frame)
            self.sio.emit("audio", pcm[off : off + n].tobytes())
            delay = t0 + (i + 1) * packet_ms / 1000 / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def close(self) -> None:
        """Disconnect (idempotent)."""
        ws = getattr(self.sio.eio, "ws", None)
        if ws is not None:
            # The server has already dropped the WebSocket after the Socket.IO disconnect packet, so
            # websocket-client would wait its full 3 s for a close frame that never comes.
            ws.close = functools.partial(type(ws).close, ws, timeout=0.1)
        if self.sio.connected or isinstance(self.sio, LoopClient):  # a LoopClient's thread ends here too
            self.sio.disconnect()
