"""A scripted fake of :class:`engine.interface.Engine` for driving the server in tests.

Each turn is answered by a producer thread: text deltas, then ``reply_seconds`` of a 24 kHz tone in
``chunk_ms`` chunks, then ``ReplyEnd``. Cancellation stops it through an Event (no sleeps, no killed
threads). Everything the server asks is recorded for assertions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from engine.interface import (
    REPLY_SAMPLE_RATE,
    AudioChunk,
    Conversation,
    Engine,
    EventSink,
    ReplyEnd,
    TextDelta,
    TurnRequest,
)


@dataclass
class Script:
    """What the fake says for every turn."""

    text: tuple[str, ...] = ("Hello", ", I hear you.")
    reply_seconds: float = 3.0
    chunk_ms: int = 40
    chunk_interval_s: float = 0.0
    """Seconds between produced chunks (0: as fast as the server takes them)."""
    freq_hz: float = 440.0


def tone_chunk(n: int, offset: int, freq_hz: float) -> bytes:
    """``n`` samples of a PCM16 sine at 24 kHz starting at sample ``offset``."""
    t = (np.arange(n) + offset) / REPLY_SAMPLE_RATE
    return (0.3 * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype("<i2").tobytes()


@dataclass
class FakeConversation(Conversation):
    """One session's scripted conversation; records every call."""

    sink: EventSink
    script: Script
    requests: list[TurnRequest] = field(default_factory=list)
    cancels: list[int] = field(default_factory=list)
    playback: list[tuple[str, int]] = field(default_factory=list)
    resets: int = 0
    closed: bool = False
    _stops: dict[int, threading.Event] = field(default_factory=dict)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start_turn(self, request: TurnRequest) -> None:
        stop = threading.Event()
        with self._lock:
            self.requests.append(request)
            self._stops[request.epoch] = stop
        th = threading.Thread(target=self._produce, args=(request, stop), name=f"fake-turn-{request.reply_id}")
        self._threads.append(th)
        th.start()

    def _produce(self, req: TurnRequest, stop: threading.Event) -> None:
        s = self.script
        for piece in s.text:
            if stop.is_set():
                break
            self.sink(TextDelta(req.reply_id, req.epoch, piece))
        n = REPLY_SAMPLE_RATE * s.chunk_ms // 1000
        total = round(s.reply_seconds * REPLY_SAMPLE_RATE)
        for seq, offset in enumerate(range(0, total, n)):
            if stop.is_set() or (s.chunk_interval_s and stop.wait(s.chunk_interval_s)):
                break
            self.sink(AudioChunk(req.reply_id, req.epoch, seq, tone_chunk(min(n, total - offset), offset, s.freq_hz)))
        reason = "cancelled" if stop.is_set() else "done"
        self.sink(ReplyEnd(req.reply_id, req.epoch, reason, {"fake_first_token": 1.0}))

    def cancel(self, epoch: int) -> None:
        with self._lock:
            self.cancels.append(epoch)
            for e, stop in self._stops.items():
                if e <= epoch:
                    stop.set()

    def playback_report(self, reply_id: str, samples_played: int) -> None:
        self.playback.append((reply_id, samples_played))

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        self.closed = True
        self.cancel(1 << 62)
        for th in self._threads:
            th.join(timeout=5)


class FakeEngine(Engine):
    """Hands out :class:`FakeConversation` objects that all follow one :class:`Script`."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.conversations: list[FakeConversation] = []
        self.healthy = True

    def open_conversation(self, sink: EventSink) -> FakeConversation:
        conv = FakeConversation(sink, self.script)
        self.conversations.append(conv)
        return conv

    def health(self) -> dict[str, object]:
        return {"ok": self.healthy, "engine": "fake"}
