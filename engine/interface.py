"""The one boundary between the web server and the conversation engine.

The server owns sockets, VAD and playback; the engine owns the model, history and speech synthesis.
They meet here and nowhere else:

* the server opens one :class:`Conversation` per session, giving it a thread-safe ``sink`` callable;
* it calls :meth:`Conversation.start_turn` with a :class:`TurnRequest` (an utterance: audio, camera
  frames, optional typed text), tagged with a reply id and the session's turn epoch;
* the engine answers by calling ``sink`` with :data:`ReplyEvent` objects (text deltas, 24 kHz PCM16
  chunks, the end of the reply), each carrying the same reply id and epoch;
* :meth:`Conversation.cancel` stops everything at or below an epoch; the server drops any late event
  whose epoch is stale, so cancellation is safe however late it lands.
* a full-duplex engine first *judges* a spoken turn and says so with one :class:`Judgement` before any
  other event of that reply: ``addressed=False`` (the utterance was not meant for the assistant, or too
  short) is followed only by ``ReplyEnd(reason="not_addressed")``; ``addressed=True`` means the engine
  has taken the turn over (it stopped its own older replies of the conversation, keeping in the history
  only what the client reported as played) and the answer follows. An engine that sends no
  ``Judgement`` treats every turn as addressed; the server takes the reply's first event as the verdict.

Every call on a ``Conversation`` returns quickly (no model work on the caller's thread), and the sink
may be called from any thread.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

MIC_SAMPLE_RATE = 16_000
"""Sample rate of user audio handed to the engine (mono float32)."""

REPLY_SAMPLE_RATE = 24_000
"""Sample rate of reply audio produced by the engine (mono PCM16 little-endian)."""


@dataclass(frozen=True, slots=True)
class CameraFrame:
    """One JPEG camera frame and where it falls on the session's mic clock."""

    jpeg: bytes
    at_sample: int
    """Mic samples (16 kHz) received in the session before this frame arrived."""

    def __repr__(self) -> str:  # never print payloads
        return f"CameraFrame({len(self.jpeg)} B @ {self.at_sample})"


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """A user turn to answer: a spoken utterance (with frames around it) or typed text."""

    reply_id: str
    epoch: int
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    """Mono float32 in [-1, 1] at :data:`MIC_SAMPLE_RATE`; empty for a typed question."""
    frames: tuple[CameraFrame, ...] = ()
    text: str | None = None
    """Typed question, if any."""
    start_sample: int = 0
    end_sample: int = 0
    """Span of the speech on the session's mic clock (samples): from the VAD's start to the start of the
    silence that ended it; ``audio`` also holds the pre-roll before and the post-roll after."""
    provisional: bool = False
    """Answered ahead of the end-of-turn decision (only sent to a conversation whose
    :attr:`Conversation.answers_ahead` is true): it may judge and prepare the answer, but must not let the
    turn change the conversation (its history, its older replies) until :meth:`Conversation.confirm_turn`;
    :meth:`Conversation.withdraw_turn` (or a cancel of its epoch) means it never happened."""

    def speech_ms(self) -> float:
        """How long the user spoke (the span; the audio's length when no span is set)."""
        span = self.end_sample - self.start_sample
        return 1000 * (span if span > 0 else self.audio.size) / MIC_SAMPLE_RATE

    def __repr__(self) -> str:
        return (
            f"TurnRequest(reply_id={self.reply_id!r}, epoch={self.epoch}, audio={self.audio.size} smp, "
            f"frames={len(self.frames)}, text={'yes' if self.text else 'no'}"
            f"{', provisional' if self.provisional else ''})"
        )


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Newly generated reply text (state tokens already stripped)."""

    reply_id: str
    epoch: int
    text: str


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A chunk of reply speech: mono PCM16 little-endian at :data:`REPLY_SAMPLE_RATE`."""

    reply_id: str
    epoch: int
    seq: int
    pcm: bytes

    @property
    def num_samples(self) -> int:
        """Number of 16-bit samples in the chunk."""
        return len(self.pcm) // 2

    def __repr__(self) -> str:
        return f"AudioChunk({self.reply_id!r}, epoch={self.epoch}, seq={self.seq}, {self.num_samples} smp)"


ReplyEndReason = Literal["done", "cancelled", "not_addressed", "error"]


@dataclass(frozen=True, slots=True)
class ReplyEnd:
    """The reply is over: no further event will carry this reply id."""

    reply_id: str
    epoch: int
    reason: ReplyEndReason
    timings_ms: dict[str, float] = field(default_factory=dict)
    """Engine-side stage timings for this turn (e.g. ``first_token``, ``first_audio``)."""


@dataclass(frozen=True, slots=True)
class EngineError:
    """Something failed while answering; ``fatal`` means the engine itself is down."""

    reply_id: str | None
    epoch: int
    message: str
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class Judgement:
    """The monitor's verdict on a turn, sent before any other event of its reply."""

    reply_id: str
    epoch: int
    addressed: bool
    why: str = ""
    """``state_token`` (the model's first token decided), ``typed``, ``policy`` (always answer),
    or ``too_short``."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    """E.g. ``judge`` (ms from the request to the monitor's first token)."""


ReplyEvent = TextDelta | AudioChunk | ReplyEnd | EngineError | Judgement
EventSink = Callable[[ReplyEvent], None]

EngineState = Literal["starting", "ready", "restarting", "dead"]
"""``starting``: being started (first start or a restart attempt); ``ready``: serving; ``restarting``: it
died and waits out its backoff before the next start; ``dead``: no further restart (attempts exhausted,
supervision off, or the server is shutting down)."""


@dataclass(frozen=True, slots=True)
class EngineStatus:
    """One model instance behind the engine (e.g. one vLLM engine), as health probes and metrics show it."""

    name: str
    state: EngineState
    active: int = 0
    """Requests in flight."""
    restarts: int = 0
    """Successful automatic restarts."""
    restart_attempts: int = 0
    """Restart attempts started (successful or not)."""
    next_restart_s: float | None = None
    """Seconds until the next restart attempt (``restarting`` only)."""
    last_error: str | None = None
    """Why it last died or failed to start."""
    start_seconds: float | None = None
    """How long its latest (re)start took."""


class Conversation(abc.ABC):
    """One session's conversation with the engine; it owns that session's history."""

    answers_ahead: bool = False
    """Whether it takes provisional turns (:attr:`TurnRequest.provisional`, then :meth:`confirm_turn` or
    :meth:`withdraw_turn`); the server sends none to a conversation without it."""

    @abc.abstractmethod
    def start_turn(self, request: TurnRequest) -> None:
        """Begin answering ``request``; events for it go to the sink. Returns at once."""

    @abc.abstractmethod
    def cancel(self, epoch: int) -> None:
        """Stop producing for every reply whose epoch is ``<= epoch``. Returns at once."""

    def playback_report(self, reply_id: str, samples_played: int) -> None:  # noqa: B027 - optional hook
        """The client has played ``samples_played`` samples (24 kHz) of ``reply_id``."""

    def confirm_turn(self, reply_id: str) -> None:  # noqa: B027 - optional hook (answers_ahead)
        """The provisional turn ``reply_id`` is a real turn: it may now take the conversation over."""

    def withdraw_turn(self, reply_id: str) -> None:  # noqa: B027 - optional hook (answers_ahead)
        """The provisional turn ``reply_id`` never happened (the user went on): stop it, keep no trace."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the conversation history."""

    @abc.abstractmethod
    def close(self) -> None:
        """Cancel everything and release the conversation's resources."""


class Engine(abc.ABC):
    """A conversation engine shared by all sessions of one server."""

    @abc.abstractmethod
    def open_conversation(self, sink: EventSink) -> Conversation:
        """Create the conversation of one session; ``sink`` receives its reply events."""

    def health(self) -> dict[str, object]:
        """A JSON-able health report: ``ok`` (required): it can answer now; ``live`` (optional, default
        ``ok``): false only when it cannot recover without a server restart; ``engines``: per-instance
        :class:`EngineStatus` as dicts."""
        return {"ok": True}

    def statuses(self) -> tuple[EngineStatus, ...]:
        """Each model instance's state (empty for an engine without separate instances)."""
        return ()

    def begin_shutdown(self) -> None:  # noqa: B027 - optional hook
        """The server is draining: stop restarting failed instances (replies in flight go on)."""

    def notice(self) -> str | None:
        """A line every user should see on the page (e.g. "the weights are random"), or ``None``."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Shut the engine down."""
