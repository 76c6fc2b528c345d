"""The turn and barge-in state machine of one session: pure, single-threaded, on an injected clock.

Inputs are VAD events, typed questions, controls, playback reports, engine events and clock ticks;
outputs are :data:`Action` values (messages for the client, calls for the engine) that the socket edge
(:mod:`server.session`) carries out in order. Nothing here touches a socket, a thread or the wall clock,
so barge-in, echo and pause/resume are tested on virtual time (``tests/test_turns.py``).

The rules (docs/protocol.md, "Barge-in, judgement and interruption"):

* speech starting while the assistant is audible *pauses* the reply at once, unless the echo guard takes
  it for the assistant's own voice;
* at the end of the utterance the engine judges it (one judgement at a time; the latest utterance waits);
  addressed → the old reply is interrupted (epoch bump, ``interrupt``, engine cancel) and the new one
  starts; not addressed → ``judgement``, and a paused reply resumes where it stopped;
* a typed question is always addressed; ``stop``/``reset`` silence the reply in flight;
* answering ahead (``answer_ahead``): once the user has paused for a moment the turn goes to the engine as a
  *provisional* one; whatever it sends back is held here, unseen, until the end-of-turn decision confirms
  the turn (then it plays out as if it had just been judged) or the user speaks on (then it is withdrawn);
* every reply event carries its epoch; anything older than the session's epoch is dropped, so once
  ``interrupt`` went out no chunk of an older reply follows it.

This object is the one owner of a reply's lifecycle: the engine never stops a reply on its own; it is
told to (:class:`Cancel`).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol

from engine.interface import (
    MIC_SAMPLE_RATE,
    AudioChunk,
    CameraFrame,
    EngineError,
    Judgement,
    ReplyEnd,
    ReplyEvent,
    TextDelta,
    TurnRequest,
)
from server import protocol as P
from server.echo import EchoGuard, EchoOptions
from server.metrics import ServerMetrics
from server.pacer import Due, OutputPacer
from vad.segmenter import SpeechEnded, SpeechStarted

log = logging.getLogger(__name__)

InterruptReason = Literal["barge_in", "text", "stop", "reset"]


class Clock(Protocol):
    """Seconds on a monotonic clock (``time.monotonic`` in production, a fake in tests)."""

    def __call__(self) -> float: ...


# ---------------------------------------------------------------------- actions (what the edge does)


@dataclass(frozen=True, slots=True)
class Send:
    """Emit one Socket.IO event to this client (``args``: one JSON payload, or header + binary)."""

    event: str
    args: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class StartTurn:
    """Hand a user turn to the conversation."""

    request: TurnRequest


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop every reply of epoch ``<= upto`` in the engine (abort generation and speech)."""

    upto: int


@dataclass(frozen=True, slots=True)
class Settle:
    """The provisional turn ``reply_id`` is the user's turn after all (``confirmed``), or it never happened
    (withdrawn: the engine stops it)."""

    reply_id: str
    confirmed: bool


@dataclass(frozen=True, slots=True)
class ResetConversation:
    """Make the engine forget this conversation's history."""


@dataclass(frozen=True, slots=True)
class ReportPlayback:
    """Tell the engine how much of a reply the client played (its history keeps only what was heard)."""

    reply_id: str
    samples: int


@dataclass(frozen=True, slots=True)
class Close:
    """End the session and its connection (sent ``error`` first)."""

    code: P.ErrorCode
    message: str


Action = Send | StartTurn | Cancel | Settle | ResetConversation | ReportPlayback | Close


# ---------------------------------------------------------------------- state


@dataclass(slots=True)
class Reply:
    """Book-keeping of one reply."""

    reply_id: str
    epoch: int
    source: Literal["voice", "text"]
    t_turn_end: float
    seq: int = 0
    ended: bool = False
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Utterance:
    """An utterance waiting for the monitor's verdict."""

    event: SpeechEnded
    frames: tuple[CameraFrame, ...]
    t_end: float


@dataclass(slots=True)
class Provisional:
    """A turn answered ahead of the end-of-turn decision, and the engine events held back for it."""

    reply: Reply
    span: tuple[int, int]
    """The utterance's (start, end) samples: the decision confirms the turn only if they still hold."""
    held: list[ReplyEvent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """What the machine needs of the server options."""

    session_id: str
    playback_lead_s: float = 0.3
    idle_timeout_s: float = 60.0
    echo: EchoOptions = field(default_factory=EchoOptions)
    answer_ahead: bool = False
    """Hand a paused utterance to the engine provisionally (the VAD and the engine both support it)."""


def _voice_request(reply: Reply, ev: SpeechEnded, frames: tuple[CameraFrame, ...],
                   provisional: bool = False) -> TurnRequest:
    """The engine's request for a spoken utterance. Its span is the speech the VAD heard, without the
    pre-roll and post-roll the audio keeps: the engine's too-short check and frame spacing go by it."""
    return TurnRequest(reply.reply_id, reply.epoch, ev.audio, frames, None, ev.start_sample, ev.end_sample,
                       provisional=provisional)


class TurnMachine:
    """One session's turns, replies and interruptions. Not thread-safe: the edge serialises calls."""

    def __init__(self, settings: TurnSettings, clock: Clock, metrics: ServerMetrics | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.epoch = 0
        self._epochs = 0  # highest epoch handed out (a judged utterance gets one before it is accepted)
        self._turns = 0
        self.reply: Reply | None = None
        self.judging: Reply | None = None
        self.waiting: Utterance | None = None
        self.provisional: Provisional | None = None
        self.pacer = OutputPacer(settings.playback_lead_s)
        self.echo = EchoGuard(settings.echo)
        self._echo_utterance = False
        self.recent_replies: deque[str] = deque(maxlen=8)
        self._last_activity = clock()
        self.closed = False
        self._out: list[Action] = []

    # ------------------------------------------------------------------ inputs

    def touch(self) -> None:
        """Something happened: the idle clock restarts."""
        self._last_activity = self.clock()

    def speech_started(self, ev: SpeechStarted) -> list[Action]:
        """The user started talking: pause an audible reply at once (unless it is our own echo)."""
        now = self.clock()
        self.touch()
        self._echo_utterance = False
        if self.audible():
            if self.echo.is_echo(now):
                self._echo_utterance = True  # the assistant hears itself: no pause, no turn
            elif not self.pacer.paused and self.reply is not None:
                self.pacer.pause(now)
                self._send(P.EV_PAUSE, P.PauseMsg(self.reply.reply_id, self.reply.epoch))
                self._observe("barge_in_pause", 0.0)
        self._send(P.EV_VAD, P.VadMsg("speech_start", _ms(ev.start_sample), None, _ms(ev.at_sample)))
        return self._flush()

    def speech_paused(self, ev: SpeechEnded, frames: tuple[CameraFrame, ...]) -> list[Action]:
        """The user paused (``ev``: the utterance so far): answer it ahead of the decision, held back here.

        Only when nothing else is being judged (one judgement at a time) and it is not our own echo."""
        if not self.settings.answer_ahead or self._echo_utterance or self.judging or self.waiting or self.provisional:
            return self._flush()
        reply = self._new_reply("voice", self.clock())
        self.provisional = Provisional(reply, (ev.start_sample, ev.end_sample))
        self._out.append(StartTurn(_voice_request(reply, ev, frames, provisional=True)))
        return self._flush()

    def speech_resumed(self) -> list[Action]:
        """The user went on after a pause: the turn answered ahead never happened."""
        self.touch()
        self._withdraw()
        return self._flush()

    def speech_ended(self, ev: SpeechEnded, frames: tuple[CameraFrame, ...]) -> list[Action]:
        """The utterance ended: judge it (or queue it behind the current judgement); echo is dropped. A turn
        answered ahead for this very utterance is confirmed instead, and what it already produced plays."""
        self._send(P.EV_VAD, P.VadMsg("speech_end", _ms(ev.start_sample), _ms(ev.end_sample), _ms(ev.at_sample)))
        self._observe("vad_decision", _ms(ev.at_sample - ev.end_sample))
        ahead = self.provisional
        if ahead is not None and ahead.span == (ev.start_sample, ev.end_sample) and not self._echo_utterance:
            return self._confirm(ahead)
        self._withdraw()
        if self._echo_utterance:
            self._echo_utterance = False
            if self.metrics:
                self.metrics.echo_suppressed.inc()
            self._send(P.EV_JUDGEMENT, P.JudgementMsg(None, False, "echo", {}))
            log.info("session %s: speech taken for the assistant's echo; ignored", self.settings.session_id)
            return self._flush()
        utterance = Utterance(ev, frames, self.clock())
        if self.judging is not None:
            self.waiting = utterance  # judged once the current verdict is in (latest wins)
        else:
            self._judge(utterance)
        return self._flush()

    def text(self, text: str, frames: tuple[CameraFrame, ...]) -> list[Action]:
        """A typed question: always addressed, so it interrupts at once and is answered."""
        self.touch()
        self._interrupt("text")
        reply = self._new_reply("text", self.clock())
        self._activate(reply)
        self._start(TurnRequest(reply_id=reply.reply_id, epoch=reply.epoch, frames=frames, text=text))
        return self._flush()

    def stop(self) -> list[Action]:
        """The client stopped listening: silence the reply in flight."""
        self._interrupt("stop")
        return self._flush()

    def reset(self) -> list[Action]:
        """Silence the reply in flight and forget the conversation."""
        self.touch()
        self._interrupt("reset")
        self._out.append(ResetConversation())
        return self._flush()

    def playback(self, reply_id: str, samples: int) -> list[Action]:
        """The client played ``samples`` of ``reply_id``; :class:`P.ProtocolError` for an unknown reply."""
        if reply_id not in self.recent_replies:
            raise P.ProtocolError("bad_control", f"playback report for unknown reply {P.cut(reply_id)!r}")
        reply = self.reply if self.reply and self.reply.reply_id == reply_id else None
        if reply is not None and samples > 0 and "first_played" not in reply.timings:
            reply.timings["first_played"] = self._since(reply.t_turn_end)
            self._observe("first_audio_played", reply.timings["first_played"])
            log.info("session %s: turn %s timeline %s", self.settings.session_id, reply_id, reply.timings)
        self._out.append(ReportPlayback(reply_id, samples))
        return self._flush()

    def engine_event(self, event: ReplyEvent) -> list[Action]:
        """An event from the engine (any reply, any epoch: stale ones are dropped here)."""
        ahead = self.provisional
        if ahead is not None and event.reply_id == ahead.reply.reply_id and event.epoch == ahead.reply.epoch \
                and not (isinstance(event, EngineError) and event.fatal):  # a dead engine is news at once
            ahead.held.append(event)  # unseen until the decision confirms the turn
            return self._flush()
        self._dispatch(event)
        return self.tick()

    def _dispatch(self, event: ReplyEvent) -> None:
        if isinstance(event, EngineError):
            self._on_engine_error(event)
            return
        reply = self._current(event)
        if reply is None:
            return
        if reply is self.judging:
            if isinstance(event, Judgement):
                reply.timings |= {f"engine_{k}": float(v) for k, v in event.timings_ms.items()}
                self._observe("judge", event.timings_ms.get("judge"))
                if event.addressed:
                    self._accept(reply)
                else:
                    self._reject(reply, event.why or "state_token", event.timings_ms)
                return
            if isinstance(event, ReplyEnd) and event.reason != "done":
                self._reject(reply, event.reason, event.timings_ms)
                return
            self._accept(reply)  # an engine without judgements: its first event is the verdict
        if reply is self.reply and not isinstance(event, Judgement):
            if isinstance(event, AudioChunk):
                self.pacer.push(event)
            elif isinstance(event, TextDelta):
                reply.timings.setdefault("first_text", self._since(reply.t_turn_end))
                self._send(P.EV_REPLY_TEXT, P.ReplyTextMsg(event.reply_id, event.epoch, event.text))
            else:
                self._finish(reply, event)

    def tick(self) -> list[Action]:
        """Time passed: send the audio now due; close the session when idle too long."""
        now = self.clock()
        for item in self.pacer.due(now):
            reply = self.reply
            if reply is None:
                continue
            if isinstance(item, ReplyEnd):
                self._send(P.EV_REPLY_END, P.ReplyEndMsg(item.reply_id, item.epoch, item.reason, reply.timings))
                continue
            self._send_audio(reply, item)
        if self.audible() or self.judging is not None or self.provisional is not None:
            self.touch()
        elif not self.closed and now - self._last_activity >= self.settings.idle_timeout_s:
            self.closed = True
            timeout = self.settings.idle_timeout_s
            log.info("session %s: idle for %gs, closing", self.settings.session_id, timeout)
            self._out.append(Close("idle_timeout", f"no activity for {timeout:g} s; session closed"))
        return self._flush()

    def next_deadline(self) -> float:
        """Seconds until :meth:`tick` has something to do (audio due, or the idle timeout)."""
        now = self.clock()
        due = self.pacer.next_due(now)
        idle = max(0.05, self._last_activity + self.settings.idle_timeout_s - now)
        return idle if due is None else min(due, idle)

    def audible(self) -> bool:
        """A reply is being generated, sent or still playing on the client (or is paused)."""
        reply = self.reply
        return reply is not None and (not reply.ended or self.pacer.audible(self.clock()))

    # ------------------------------------------------------------------ turns and interruption

    def _new_reply(self, source: Literal["voice", "text"], t_end: float) -> Reply:
        self._turns += 1
        self._epochs += 1
        reply = Reply(f"{self.settings.session_id}-{self._turns}", self._epochs, source, t_end)
        self.recent_replies.append(reply.reply_id)
        return reply

    def _start(self, request: TurnRequest) -> None:
        if self.metrics:
            self.metrics.turns.inc()
        log.info("session %s: %r", self.settings.session_id, request)
        self._out.append(StartTurn(request))

    def _confirm(self, ahead: Provisional) -> list[Action]:
        """The decision confirms the turn answered ahead: it is judged now, with what it already made."""
        self.provisional = None
        reply = self.judging = ahead.reply
        now = self.clock()
        reply.timings["answered_ahead"] = round((now - reply.t_turn_end) * 1000, 1)
        reply.t_turn_end = now  # every stage is reported from the decision, as for any turn
        if self.metrics:
            self.metrics.turns.inc()
        log.info("session %s: turn %s confirmed (answered %.0f ms ahead, %d events held)",
                 self.settings.session_id, reply.reply_id, reply.timings["answered_ahead"], len(ahead.held))
        self._out.append(Settle(reply.reply_id, confirmed=True))
        for event in ahead.held:
            self._dispatch(event)
        return self.tick()

    def _withdraw(self) -> None:
        """Drop the turn answered ahead, if any (the user spoke on, or something else took over)."""
        ahead, self.provisional = self.provisional, None
        if ahead is not None:
            log.debug("session %s: turn %s withdrawn", self.settings.session_id, ahead.reply.reply_id)
            if self.metrics:
                self.metrics.withdrawn.inc()
            self._out.append(Settle(ahead.reply.reply_id, confirmed=False))

    def _judge(self, utt: Utterance) -> None:
        """Hand an utterance to the engine; the old reply keeps its place until the verdict."""
        reply = self.judging = self._new_reply("voice", utt.t_end)
        self._start(_voice_request(reply, utt.event, utt.frames))

    def _activate(self, reply: Reply) -> None:
        """Make ``reply`` the one being spoken (any older one is already interrupted)."""
        self.epoch = reply.epoch
        self.reply = reply
        self.pacer.clear()
        self._send(P.EV_REPLY_START, P.ReplyStartMsg(reply.reply_id, reply.epoch, reply.source))

    def _interrupt(self, reason: InterruptReason, new_epoch: int | None = None, drop_pending: bool = True) -> None:
        """Silence the reply in flight (and, unless told otherwise, drop utterances under judgement)."""
        pending = self.judging
        if drop_pending:
            self.judging = self.waiting = None
            self._withdraw()
        audible = self.audible()
        if not audible and (pending is None or not drop_pending):
            return
        if new_epoch is None:
            self._epochs += 1
            new_epoch = self._epochs
        self.epoch = new_epoch
        if audible:
            old = self.reply
            self.reply = None
            self.pacer.clear()
            self.echo.forget_playback()
            self._send(P.EV_INTERRUPT, P.InterruptMsg(self.epoch, old.reply_id if old else None, reason))
            if self.metrics:
                self.metrics.interruptions.inc()
            log.info("session %s: interrupted reply (%s), epoch now %d", self.settings.session_id, reason, self.epoch)
        self._out.append(Cancel(new_epoch - 1))

    def _accept(self, reply: Reply) -> None:
        """The judged utterance is a query: the old reply (if any) is cut and this one starts."""
        self.judging = None
        self._interrupt("barge_in", new_epoch=reply.epoch, drop_pending=False)
        self._activate(reply)
        self._next_waiting()

    def _reject(self, reply: Reply, why: str, timings: dict[str, float]) -> None:
        """Not a query (☟, too short, failed): nothing is cut; a paused reply resumes where it stopped."""
        self.judging = None
        self._send(P.EV_JUDGEMENT, P.JudgementMsg(reply.reply_id, False, why, timings))
        if self.metrics and why in ("state_token", "too_short"):
            self.metrics.not_addressed.inc()
        if self.pacer.paused and self.reply is not None:
            self.pacer.resume(self.clock())
            self._send(P.EV_RESUME, P.PauseMsg(self.reply.reply_id, self.reply.epoch))
            if self.metrics:
                self.metrics.false_interruptions.inc()
        self._next_waiting()

    def _next_waiting(self) -> None:
        utt, self.waiting = self.waiting, None
        if utt is not None:
            self._judge(utt)

    def _current(self, event: AudioChunk | TextDelta | ReplyEnd | Judgement) -> Reply | None:
        for reply in (self.reply, self.judging):
            if reply is not None and event.epoch == reply.epoch and event.reply_id == reply.reply_id:
                return reply
        return None

    def _finish(self, reply: Reply, event: ReplyEnd) -> None:
        """The engine ended ``reply``; its ``reply_end`` follows the last queued chunk."""
        reply.ended = True
        self.touch()
        timings = {"reply_total": self._since(reply.t_turn_end), **reply.timings}
        timings |= {f"engine_{k}": float(v) for k, v in event.timings_ms.items()}
        reply.timings = timings
        self._observe("first_clause", event.timings_ms.get("first_clause"))
        log.info("session %s: turn %s %s, timeline %s", self.settings.session_id, reply.reply_id, event.reason,
                 timings)
        self.pacer.push(event)

    def _send_audio(self, reply: Reply, due: Due) -> None:
        chunk = due.chunk
        if "first_audio" not in reply.timings:
            reply.timings["first_audio"] = self._since(reply.t_turn_end)
            self._observe("first_audio_sent", reply.timings["first_audio"])
        header = P.ReplyAudioHeader(chunk.reply_id, chunk.epoch, reply.seq, chunk.num_samples)
        reply.seq += 1
        self.echo.note_playback(chunk.pcm, due.start, due.end)
        self._out.append(Send(P.EV_REPLY_AUDIO, (header.to_wire(), chunk.pcm)))

    def _on_engine_error(self, event: EngineError) -> None:
        log.error("session %s: engine error on %s: %s", self.settings.session_id, event.reply_id, event.message)
        if self.metrics:
            self.metrics.engine_errors.inc()
        reply, pending = self.reply, self.judging
        if reply is not None and event.reply_id in (None, reply.reply_id):
            reply.ended = True
        if pending is not None and event.reply_id in (None, pending.reply_id):
            self._reject(pending, "error", {})
        if not event.fatal:
            self._send(P.EV_ERROR, P.ErrorMsg("engine", event.message, False))
        elif not self.closed:
            # No engine can serve this session any more: tell the client (fatal error) and disconnect it,
            # so it reconnects once the server is ready again instead of talking to nobody.
            self.closed = True
            self._out.append(Close("engine", event.message))

    # ------------------------------------------------------------------ helpers

    def _send(self, event: str, msg: P.Outbound) -> None:
        self._out.append(Send(event, (msg.to_wire(),)))

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _observe(self, stage: str, ms: float | None) -> None:
        if self.metrics:
            self.metrics.observe(stage, ms)

    def _since(self, t: float) -> float:
        return round((self.clock() - t) * 1000, 1)


def _ms(samples: int) -> float:
    return round(samples * 1000 / MIC_SAMPLE_RATE, 1)
