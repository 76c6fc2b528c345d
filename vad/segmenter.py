"""Cuts a 16 kHz mic stream into utterances with Silero VAD.

Pure and clock-free: time is the number of samples pushed so far. Feed any packet size; the segmenter
buffers into strict 512-sample windows and returns events as they become certain.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vad.options import SAMPLE_RATE, WINDOW, VadOptions
from vad.silero import SileroModel, SileroStream, shared_model

REFINE_WINDOWS = 4
"""How far back (in 32 ms windows) the end of speech may move from Silero's end (its lag is 1-3 windows)."""
REFINE_FRAME = 128
"""8 ms frames for the level check that refines the end."""


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech has lasted ``min_speech_ms``: the user is talking (barge-in point)."""

    start_sample: int
    """First sample of the window where speech began."""
    at_sample: int
    """Stream position when this became certain (``start_sample`` + min speech, window-rounded)."""


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    """The user's turn is over: the utterance (with pre-roll and post-roll) is ready to answer."""

    start_sample: int
    end_sample: int
    """First sample of the silence that ended the speech (or the cut point for ``max_length``)."""
    at_sample: int
    """Stream position of the end-of-turn decision (``end_sample`` + end silence for ``silence``)."""
    audio: np.ndarray
    """Mono float32 in [-1, 1], from ``audio_start_sample`` on."""
    audio_start_sample: int
    reason: Literal["silence", "max_length"]

    def __repr__(self) -> str:  # never print audio
        return (
            f"{type(self).__name__}({self.start_sample}-{self.end_sample} @ {self.at_sample}, "
            f"{self.audio.size} smp, {self.reason})"
        )


@dataclass(frozen=True, slots=True)
class SpeechPaused:
    """The user has been silent for ``answer_ahead_ms``: the turn *may* be over. Followed by exactly one
    :class:`SpeechResumed` or :class:`SpeechEnded`."""

    utterance: SpeechEnded
    """The turn as it stands: the :class:`SpeechEnded` that follows if the silence lasts has the same span
    and audio (the post-roll is already in); its ``at_sample`` here is the pause's."""

    @property
    def at_sample(self) -> int:
        """Stream position when the pause was announced."""
        return self.utterance.at_sample


@dataclass(frozen=True, slots=True)
class SpeechResumed:
    """The user spoke again after a :class:`SpeechPaused`: the utterance goes on."""

    at_sample: int


VadEvent = SpeechStarted | SpeechPaused | SpeechResumed | SpeechEnded


class _State(enum.Enum):
    IDLE = "idle"
    CANDIDATE = "candidate"  # above threshold, not yet long enough to announce
    SPEECH = "speech"


class UtteranceSegmenter:
    """Per-stream VAD state machine: hysteresis, minimum speech, end-of-turn silence, pre-roll, max length."""

    def __init__(self, options: VadOptions | None = None, model: SileroModel | None = None) -> None:
        self.options = options or VadOptions()
        self._stream: SileroStream = (model or shared_model()).stream()
        o = self.options
        self._min_speech = o.samples(o.min_speech_ms)
        self._end_silence = o.samples(o.end_silence_ms)
        self._preroll = o.samples(o.preroll_ms)
        self._postroll = min(o.samples(o.postroll_ms), self._end_silence)
        ahead = o.samples(o.answer_ahead_ms)
        # The paused turn's audio must be the final one: announce no earlier than the post-roll is in.
        self._ahead = max(ahead, self._postroll) if 0 < ahead < self._end_silence else None
        self._max_len = o.samples(o.max_utterance_s * 1000)
        self.reset()

    def reset(self) -> None:
        """Start over (new stream): model state, buffers and the sample clock."""
        self._stream.reset()
        self._state = _State.IDLE
        self._pending = np.zeros(0, np.float32)
        self._windows: list[np.ndarray] = []
        self._windows_start = 0  # absolute sample index of self._windows[0]
        self._pos = 0  # samples consumed into windows so far
        self._start = 0
        self._silence_start: int | None = None
        self._voice_end = 0  # where the voice stopped, refined from ``_silence_start`` (see _refined_end)
        self._paused = False  # a SpeechPaused is out for the current silence
        self.last_probability = 0.0

    @property
    def samples_seen(self) -> int:
        """Samples pushed so far (the stream's clock), including a partial window not yet analysed."""
        return self._pos + self._pending.size

    @property
    def in_speech(self) -> bool:
        """True between :class:`SpeechStarted` and :class:`SpeechEnded`."""
        return self._state is _State.SPEECH

    def push(self, pcm: np.ndarray) -> list[VadEvent]:
        """Feed mono 16 kHz audio (int16, or float32 in [-1, 1]); returns the events it completed."""
        if pcm.ndim != 1:
            raise ValueError(f"expected mono 1-D audio, got shape {pcm.shape}")
        x = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32, copy=False)
        buf = np.concatenate([self._pending, x]) if self._pending.size else x
        events: list[VadEvent] = []
        n_full = buf.size // WINDOW * WINDOW
        for off in range(0, n_full, WINDOW):
            ev = self._step(buf[off : off + WINDOW].copy())
            if ev is not None:
                events.append(ev)
        self._pending = buf[n_full:].copy()
        return events

    def _step(self, window: np.ndarray) -> VadEvent | None:
        o = self.options
        start_of_window = self._pos
        p = self._stream.probability(window)
        self.last_probability = p
        self._windows.append(window)
        self._pos += WINDOW
        event: VadEvent | None = None

        if self._state is _State.IDLE:
            if p >= o.threshold:
                self._state, self._start = _State.CANDIDATE, start_of_window
        elif self._state is _State.CANDIDATE:
            if p < o.neg_threshold:
                self._state = _State.IDLE  # a blip, not speech
        elif p < o.neg_threshold:
            if self._silence_start is None:
                self._silence_start = start_of_window
                self._voice_end = self._refined_end(start_of_window)
        elif p >= o.threshold:
            self._silence_start = None  # the pause was inside the utterance
            if self._paused:
                self._paused = False
                event = SpeechResumed(at_sample=self._pos)

        if self._state is _State.CANDIDATE and self._pos - self._start >= self._min_speech:
            self._state, self._silence_start = _State.SPEECH, None
            event = SpeechStarted(start_sample=self._start, at_sample=self._pos)
        elif self._state is _State.SPEECH:
            if self._silence_start is not None and self._pos - self._voice_end >= self._end_silence:
                event = self._finish(self._voice_end, self._voice_end + self._postroll, "silence")
            elif self._pos - self._start + self._preroll >= self._max_len:
                event = self._finish(self._pos, self._pos, "max_length")
            elif self._ahead is not None and self._silence_start is not None and not self._paused \
                    and self._pos - self._voice_end >= self._ahead:
                self._paused = True
                audio_start, audio = self._cut(self._voice_end + self._postroll)
                event = SpeechPaused(
                    SpeechEnded(self._start, self._voice_end, self._pos, audio, audio_start, "silence"))

        self._trim()
        return event

    def _refined_end(self, silence_start: int) -> int:
        """Where the voice really stopped, at most ``REFINE_WINDOWS`` windows before Silero's end.

        Silero's probability lags the signal: it stays above the threshold for one to three windows after
        the last sound. The end is moved back to the last 8 ms frame within ``end_refine_db`` of the
        utterance's loud level. Noise above that level keeps Silero's end: never later than before.
        """
        o = self.options
        if o.end_refine_db <= 0 or not self._windows:
            return silence_start
        audio = np.concatenate(self._windows)
        rel = silence_start - self._windows_start
        lowest = max(rel - REFINE_WINDOWS * WINDOW, self._start + self._min_speech - self._windows_start, 0)
        reference = audio[max(0, rel - SAMPLE_RATE) : rel]
        frames = reference[: reference.size // REFINE_FRAME * REFINE_FRAME].reshape(-1, REFINE_FRAME)
        if lowest >= rel or frames.size == 0:
            return silence_start
        loud = float(np.percentile(np.sqrt((frames**2).mean(axis=1)), 95)) * 10 ** (-o.end_refine_db / 20)
        tail = audio[rel - (rel - lowest) // REFINE_FRAME * REFINE_FRAME : rel].reshape(-1, REFINE_FRAME)
        above = np.nonzero(np.sqrt((tail**2).mean(axis=1)) >= loud)[0]
        if above.size == 0:
            return silence_start - tail.size  # quiet all through the look-back: the voice ended before it
        return silence_start - tail.size + int(above[-1] + 1) * REFINE_FRAME

    def _cut(self, audio_end: int) -> tuple[int, np.ndarray]:
        """The utterance's first sample and its audio up to ``audio_end`` (pre-roll included)."""
        audio_start = max(self._start - self._preroll, self._windows_start)
        audio_end = min(audio_end, audio_start + self._max_len)  # the check is window-granular; the cap is not
        audio = np.concatenate(self._windows)
        return audio_start, audio[audio_start - self._windows_start : audio_end - self._windows_start]

    def _finish(self, end: int, audio_end: int, reason: Literal["silence", "max_length"]) -> SpeechEnded:
        audio_start, audio = self._cut(audio_end)
        self._state, self._silence_start, self._paused = _State.IDLE, None, False
        return SpeechEnded(
            start_sample=self._start,
            end_sample=end,
            at_sample=self._pos,
            audio=audio,
            audio_start_sample=audio_start,
            reason=reason,
        )

    def _trim(self) -> None:
        """Keep only what a future utterance can still need (pre-roll before the earliest possible start)."""
        keep_from = (self._start if self._state is not _State.IDLE else self._pos) - self._preroll
        while self._windows and self._windows_start + WINDOW <= keep_from:
            self._windows.pop(0)
            self._windows_start += WINDOW
