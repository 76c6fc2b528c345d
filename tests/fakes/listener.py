"""A Socket.IO test client that *listens* like the page: it plays reply audio on a simulated speaker in
real time, obeys ``pause`` / ``resume`` / ``interrupt``, reports what it played (``playback`` control),
and can loop what its speaker plays back into its microphone (echo) while it streams a fixture."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np

from tests.fakes.harness import RecordingClient

REPLY_RATE, MIC_RATE = 24_000, 16_000


class ListeningClient(RecordingClient):
    """A :class:`RecordingClient` with a simulated speaker."""

    def __init__(self, url: str) -> None:
        self.arrival: list[float] = []  # monotonic receive time of each entry of ``events``
        super().__init__(url)
        self._speaker: deque[list[Any]] = deque()  # [reply_id, int16 samples, read offset]
        self._lock = threading.RLock()
        self._last = time.monotonic()
        self._paused = False
        self.epoch = 0
        self.played: dict[str, int] = {}
        self._echo: list[np.ndarray] = []  # 24 kHz audio played since the mic last took it
        self.sio.on("reply_audio", self._on_audio)
        self.sio.on("pause", self._on_pause)
        self.sio.on("resume", self._on_resume)
        self.sio.on("interrupt", self._on_interrupt)
        self.sio.on("reply_start", self._on_start)

    def _record(self, event: str, *args: Any) -> None:
        with self._cond:
            self.events.append((event, args))
            self.arrival.append(time.monotonic())
            self._cond.notify_all()

    # --- the speaker ---

    def _advance(self) -> None:
        now = time.monotonic()
        n, self._last = int((now - self._last) * REPLY_RATE), now
        while n > 0 and self._speaker and not self._paused:
            item = self._speaker[0]
            rid, pcm, off = item
            take = min(n, pcm.size - off)
            self._echo.append(pcm[off : off + take])
            self.played[rid] = self.played.get(rid, 0) + take
            item[2] += take
            n -= take
            if item[2] >= pcm.size:
                self._speaker.popleft()

    def _report(self, reply_id: str | None) -> None:
        if reply_id and reply_id in self.played:
            self.sio.emit("control", {"type": "playback", "reply_id": reply_id, "samples": self.played[reply_id]})

    def _current(self) -> str | None:
        return self._speaker[0][0] if self._speaker else None

    def _on_start(self, msg: dict) -> None:
        self._record("reply_start", msg)
        with self._lock:
            self.epoch = max(self.epoch, msg["epoch"])

    def _on_audio(self, header: dict, pcm: bytes) -> None:
        self._record("reply_audio", header, pcm)
        with self._lock:
            self._advance()
            if header["epoch"] >= self.epoch:
                self._speaker.append([header["reply_id"], np.frombuffer(pcm, "<i2"), 0])

    def _on_pause(self, msg: dict) -> None:
        self._record("pause", msg)
        with self._lock:
            self._advance()
            self._paused = True
            self._report(msg["reply_id"])

    def _on_resume(self, msg: dict) -> None:
        self._record("resume", msg)
        with self._lock:
            self._advance()
            self._paused = False

    def _on_interrupt(self, msg: dict) -> None:
        self._record("interrupt", msg)
        with self._lock:
            self._advance()
            self.epoch = max(self.epoch, msg["epoch"])
            self._paused = False
            self._report(msg.get("reply_id"))
            self._speaker.clear()

    def report_all(self) -> None:
        """Send a playback report for every reply heard so far (what the page does as it drains)."""
        with self._lock:
            self._advance()
            for rid in list(self.played):
                self._report(rid)

    def take_echo(self) -> np.ndarray:
        """What the speaker played since the last call, as 16 kHz float samples."""
        with self._lock:
            self._advance()
            played, self._echo = self._echo, []
        if not played:
            return np.zeros(0, np.float32)
        x = np.concatenate(played).astype(np.float32) / 32768
        n = int(x.size * MIC_RATE / REPLY_RATE)
        return np.interp(np.arange(n) * REPLY_RATE / MIC_RATE, np.arange(x.size), x).astype(np.float32)

    # --- the microphone ---

    def talk(self, pcm: np.ndarray, echo_gain: float = 0.0, packet_ms: int = 20) -> None:
        """Stream ``pcm`` (int16, 16 kHz) in real time, adding ``echo_gain`` × the speaker's output."""
        n = MIC_RATE * packet_ms // 1000
        pending = np.zeros(0, np.float32)
        t0 = time.monotonic()
        for i, off in enumerate(range(0, pcm.size, n)):
            mic = pcm[off : off + n].astype(np.float32) / 32768
            if echo_gain:
                pending = np.concatenate([pending, self.take_echo()])
                k = min(mic.size, pending.size)
                mic[:k] += echo_gain * pending[:k]
                pending = pending[k:]
            self.sio.emit("audio", (np.clip(mic, -1, 1) * 32767).astype("<i2").tobytes())
            delay = t0 + (i + 1) * packet_ms / 1000 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
