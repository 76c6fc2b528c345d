"""Server-side echo guard: speech heard while the assistant is audible must be louder than its echo.

Browsers cancel most echo, but what leaks through (laptop speakers, a phone on speaker) reaches the VAD
as speech and would stop the assistant mid-sentence. The session knows what it sent and when the
client plays it, so at a speech start during playback it compares the mic level over the last
``window_ms`` with the level of the reply audio playing over the same stretch (plus ``slack_ms`` for
the client's output/input latency). Speech quieter than ``ratio`` × that level is taken for echo: it
neither pauses the reply nor becomes a turn. A user talking over the assistant, close to the mic,
is louder than the speaker's residue, so real barge-ins still pass.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _opt(default: Any, help_text: str) -> Any:
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True, slots=True)
class EchoOptions:
    """Echo guard settings (command line: ``--echo_*``)."""

    guard: bool = _opt(True, "compare the mic with the reply audio being played before treating speech as barge-in")
    ratio: float = _opt(
        0.25, "speech during playback must be at least this loud relative to the playing reply (0.25 = -12 dB)"
    )
    window_ms: float = _opt(300, "mic audio (ms before the speech start) whose level is compared")
    slack_ms: float = _opt(250, "extra playback time considered (client output + mic input latency)")


def _rms(pcm: np.ndarray) -> float:
    x = pcm.astype(np.float64) / 32768.0
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


class EchoGuard:
    """Per-session record of recent mic and playback levels on the monotonic clock."""

    def __init__(self, options: EchoOptions) -> None:
        self.options = options
        self._mic: deque[tuple[float, float, int]] = deque(maxlen=200)  # (arrival, mean square, samples)
        self._play: deque[tuple[float, float, float, int]] = deque(maxlen=400)  # (start, end, mean square, n)

    def note_mic(self, pcm: np.ndarray, now: float) -> None:
        """A mic packet arrived at ``now``."""
        if pcm.size:
            self._mic.append((now, _rms(pcm) ** 2, int(pcm.size)))

    def note_playback(self, pcm16: bytes, start: float, end: float) -> None:
        """A reply chunk the client will play from ``start`` to ``end``."""
        pcm = np.frombuffer(pcm16, dtype="<i2")
        if pcm.size:
            self._play.append((start, end, _rms(pcm) ** 2, int(pcm.size)))

    def forget_playback(self) -> None:
        """The client flushed its audio (interruption): nothing is playing any more."""
        self._play.clear()

    def levels(self, now: float) -> tuple[float, float]:
        """(mic RMS over the window, RMS of the reply playing during it, slack included)."""
        win = self.options.window_ms / 1000
        lo_mic, lo_play = now - win, now - win - self.options.slack_ms / 1000
        mic = [(ms, n) for t, ms, n in self._mic if t >= lo_mic]
        play = [(ms, n) for s, e, ms, n in self._play if e >= lo_play and s <= now]
        return _pooled(mic), _pooled(play)

    def is_echo(self, now: float) -> bool:
        """Whether speech detected at ``now`` is most likely the assistant's own voice."""
        if not self.options.guard:
            return False
        mic, play = self.levels(now)
        return play > 0 and mic < self.options.ratio * play


def _pooled(items: list[tuple[float, int]]) -> float:
    total = sum(n for _, n in items)
    return math.sqrt(sum(ms * n for ms, n in items) / total) if total else 0.0
