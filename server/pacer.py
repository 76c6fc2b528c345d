"""The output pacer: reply audio leaves a little ahead of the client's playback, never far ahead.

Pure and clock-driven (every method takes ``now``, seconds on a monotonic clock): it knows how much
audio the client holds (``play_until``), keeps the rest in a backlog, and hands out what is due. Sending
little ahead keeps an interruption cheap (the client flushes at most ``lead`` seconds); holding the
backlog while paused means a verdict behind paused audio is still read and nothing is lost on resume.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.interface import REPLY_SAMPLE_RATE, AudioChunk, ReplyEnd


@dataclass(frozen=True, slots=True)
class Due:
    """An audio chunk to send now, with the playback span it will take on the client."""

    chunk: AudioChunk
    start: float
    end: float


@dataclass
class OutputPacer:
    """Backlog of one reply's audio (and its end marker), paced against the client's playback clock."""

    lead_s: float
    backlog: deque[AudioChunk | ReplyEnd] = field(default_factory=deque)
    play_until: float = 0.0
    """When the client runs out of the audio sent so far."""
    paused: bool = False
    paused_left: float = 0.0
    """Seconds of sent audio the client still held when it paused."""

    def push(self, item: AudioChunk | ReplyEnd) -> None:
        """Queue audio (or the reply's end, sent after its last chunk)."""
        self.backlog.append(item)

    def audible(self, now: float) -> bool:
        """Audio is queued, paused, or still playing on the client."""
        return bool(self.backlog) or self.paused or now < self.play_until

    def pause(self, now: float) -> None:
        """The client stopped playing and keeps its buffer."""
        if not self.paused:
            self.paused = True
            self.paused_left = max(0.0, self.play_until - now)

    def resume(self, now: float) -> None:
        """The client plays on from where it paused."""
        if self.paused:
            self.paused = False
            self.play_until = now + self.paused_left

    def clear(self) -> None:
        """Forget everything (interruption): nothing queued, nothing playing."""
        self.backlog.clear()
        self.paused = False
        self.play_until = 0.0
        self.paused_left = 0.0

    def due(self, now: float) -> list[Due | ReplyEnd]:
        """Everything to send at ``now``: chunks until the client holds ``lead_s`` ahead; an end marker
        as soon as the chunks before it are sent. Nothing while paused."""
        out: list[Due | ReplyEnd] = []
        while self.backlog and not self.paused:
            item = self.backlog[0]
            if isinstance(item, ReplyEnd):
                self.backlog.popleft()
                out.append(item)
                continue
            if self.play_until - now > self.lead_s:
                break
            self.backlog.popleft()
            start = max(self.play_until, now)
            self.play_until = start + item.num_samples / REPLY_SAMPLE_RATE
            out.append(Due(item, start, self.play_until))
        return out

    def next_due(self, now: float) -> float | None:
        """Seconds until something is due (0: now), ``None`` when nothing waits or while paused."""
        if not self.backlog or self.paused:
            return None
        if isinstance(self.backlog[0], ReplyEnd):
            return 0.0
        return max(0.0, self.play_until - now - self.lead_s)
