"""One :class:`Session` per connection: it owns all of that client's state and its emit thread.

Threads: Socket.IO handlers for one connection run in order on its reader thread (``async_handlers``
is off) and call ``on_audio`` / ``on_frame`` / ``on_control``; engine threads call the sink, which only
queues; the session's emit thread delivers queued reply events and keeps reply audio in a backlog it
sends a little ahead of real time (never while paused, so a verdict behind paused audio is still
read). Every reply emit and every epoch change happen under one lock, so once ``interrupt`` is sent no
chunk of an older epoch can follow it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
import wave
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.interface import (
    MIC_SAMPLE_RATE,
    REPLY_SAMPLE_RATE,
    AudioChunk,
    CameraFrame,
    Engine,
    EngineError,
    Judgement,
    ReplyEnd,
    ReplyEvent,
    TextDelta,
    TurnRequest,
)
from server import protocol as P
from server.echo import EchoGuard
from server.metrics import ServerMetrics
from server.options import ServerOptions
from server.ratelimit import TokenBucket
from vad.segmenter import SpeechEnded, SpeechStarted, UtteranceSegmenter
from vad.silero import SileroModel

log = logging.getLogger(__name__)

Send = Callable[..., None]
"""``send(event, *args)``: emit one Socket.IO event to this session's client."""

_CLOSE = object()  # sentinel that stops the emit thread
_WAKE = object()  # sentinel that makes the emit thread look at its audio backlog again
_JOIN_TIMEOUT_S = 5.0
_FRAME_CONTEXT_SAMPLES = MIC_SAMPLE_RATE  # frames up to 1 s before an utterance still belong to it

InterruptReason = Literal["barge_in", "text", "stop", "reset"]


@dataclass(slots=True)
class _Reply:
    """Book-keeping of one reply (owned by the session, guarded by its lock)."""

    reply_id: str
    epoch: int
    source: Literal["voice", "text"]
    t_turn_end: float
    seq: int = 0
    ended: bool = False
    judged: bool = False
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Utterance:
    """An utterance waiting for the monitor (only one is judged at a time per session)."""

    event: SpeechEnded
    frames: tuple[CameraFrame, ...]
    t_end: float


class Session:
    """Everything of one connected client: VAD, frames, the conversation, the reply in flight.

    Full-duplex behaviour: speech starting while the assistant is audible *pauses* the reply at once
    (``pause``; the client stops playback and keeps its buffer) unless the echo guard takes it for the
    assistant's own voice. When the utterance ends the engine judges it; an addressed turn interrupts
    the old reply (``interrupt``) and starts the new one, anything else resumes it (``resume``).
    """

    def __init__(
        self,
        sid: str,
        options: ServerOptions,
        engine: Engine,
        send: Send,
        disconnect: Callable[[], None],
        vad_model: SileroModel | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.sid = sid
        self.id = uuid.uuid4().hex[:8]  # short id for logs and the client; never the socket sid
        self.options = options
        self.metrics = metrics
        lim = options.limits
        self._send = send
        self._disconnect = disconnect
        self._lock = threading.RLock()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self.listening = False
        self.epoch = 0
        self._epochs = 0  # highest epoch handed out (a judged utterance gets one before it is accepted)
        self._reply: _Reply | None = None
        self._judging: _Reply | None = None
        self._waiting: _Utterance | None = None
        self._backlog: deque[AudioChunk] = deque()
        self._paused = False
        self._paused_left = 0.0  # seconds of audio the client still held when it paused
        self._echo_utterance = False
        self._recent_replies: deque[str] = deque(maxlen=8)
        self._play_until = 0.0  # monotonic time at which the client runs out of sent reply audio
        self._last_activity = time.monotonic()
        self._turns = 0
        self.echo = EchoGuard(options.echo)
        self.segmenter = UtteranceSegmenter(options.vad, vad_model)
        self.frames: deque[CameraFrame] = deque(maxlen=lim.max_frames_kept)
        self._max_audio_bytes = 2 * round(lim.max_audio_packet_ms * MIC_SAMPLE_RATE / 1000)
        self._audio_bucket = TokenBucket(
            MIC_SAMPLE_RATE * lim.audio_rate_factor, MIC_SAMPLE_RATE * max(lim.audio_burst_s, 0.1)
        )
        frame_rate = options.camera_fps * lim.frame_rate_factor
        self._frame_bucket = TokenBucket(frame_rate, max(3.0, 2 * frame_rate))
        self._control_bucket = TokenBucket(lim.max_control_per_s, 2 * lim.max_control_per_s)
        self._error_bucket = TokenBucket(lim.max_errors_per_s, lim.max_errors_per_s)
        self._errors_suppressed = 0
        self.conversation = engine.open_conversation(self._sink)
        self._thread = threading.Thread(target=self._emit_loop, name=f"session-emit-{self.id}", daemon=True)
        self._thread.start()
        self._emit(P.EV_HELLO, P.HelloMsg(
            session=self.id,
            mic_sample_rate=MIC_SAMPLE_RATE,
            reply_sample_rate=REPLY_SAMPLE_RATE,
            camera_fps=options.camera_fps,
            max_audio_packet_bytes=self._max_audio_bytes,
            max_frame_bytes=lim.max_frame_bytes,
            notice=engine.notice(),
        ))

    # ------------------------------------------------------------------ inbound (reader thread)

    def on_audio(self, data: Any) -> None:
        """A mic packet: validate, rate-limit, run VAD, act on speech start / end of turn."""
        self._require_listening("audio")
        pcm = P.parse_audio(data, self._max_audio_bytes)
        if not self._audio_bucket.take(pcm.size):
            raise P.ProtocolError("rate_limited", "mic audio arrives faster than real time allows; packet dropped")
        self.echo.note_mic(pcm, time.monotonic())
        for event in self.segmenter.push(pcm):
            if isinstance(event, SpeechStarted):
                self._on_speech_started(event)
            else:
                self._on_speech_ended(event)

    def on_frame(self, data: Any) -> None:
        """A camera JPEG: validate, rate-limit, keep it stamped with the mic clock."""
        self._require_listening("frame")
        if not self._frame_bucket.take():
            raise P.ProtocolError(
                "rate_limited", f"camera frames arrive faster than {self._frame_bucket.rate:g}/s; frame dropped"
            )
        jpeg, _w, _h = P.parse_frame(data, self.options.limits.max_frame_bytes)
        self.frames.append(CameraFrame(jpeg=jpeg, at_sample=self.segmenter.samples_seen))

    def on_control(self, data: Any) -> dict[str, Any]:
        """A JSON control event; returns the acknowledgement sent back to the client."""
        if not self._control_bucket.take():
            raise P.ProtocolError("rate_limited", "too many control events; this one was dropped")
        ctl = P.parse_control(data, self.options.limits.max_text_chars)
        if ctl == P.SimpleControl("start"):
            self._touch()
            if not self.listening:
                self.segmenter.reset()
                self.frames.clear()
                self.listening = True
        elif ctl == P.SimpleControl("stop"):
            self.listening = False
            self._interrupt("stop")
        elif ctl == P.SimpleControl("reset"):
            self._touch()
            self._interrupt("reset")
            self.conversation.reset()
        elif isinstance(ctl, P.TextControl):
            self._touch()
            recent = [f for f in self.frames if f.at_sample >= self.segmenter.samples_seen - 2 * MIC_SAMPLE_RATE]
            frames = tuple(recent or list(self.frames)[-1:])
            self._start_text_turn(ctl.text, frames)
        elif isinstance(ctl, P.PlaybackControl):
            if ctl.reply_id not in self._recent_replies:
                raise P.ProtocolError("bad_control", f"playback report for unknown reply {ctl.reply_id!r}")
            self._on_playback(ctl.reply_id, ctl.samples)
        return {"ok": True, "type": ctl.type, "epoch": self.epoch, "listening": self.listening}

    def _require_listening(self, what: str) -> None:
        if not self.listening:
            raise P.ProtocolError("not_started", f"{what} received before 'start' (or after 'stop'); dropped")

    def _on_playback(self, reply_id: str, samples: int) -> None:
        with self._lock:
            reply = self._reply if self._reply and self._reply.reply_id == reply_id else None
            if reply is not None and samples > 0 and "first_played" not in reply.timings:
                reply.timings["first_played"] = _since(reply.t_turn_end)
                self._observe("first_audio_played", reply.timings["first_played"])
                log.info("session %s: turn %s timeline %s", self.id, reply_id, reply.timings)
        self.conversation.playback_report(reply_id, samples)

    def _on_speech_started(self, ev: SpeechStarted) -> None:
        self._touch()
        now = time.monotonic()
        with self._lock:
            self._echo_utterance = False
            if self._audible():
                if self.echo.is_echo(now):
                    self._echo_utterance = True  # the assistant hears itself: no pause, no turn
                elif not self._paused and self._reply is not None:
                    self._paused = True
                    self._paused_left = max(0.0, self._play_until - now)
                    self._emit(P.EV_PAUSE, P.PauseMsg(self._reply.reply_id, self._reply.epoch))
                    self._observe("barge_in_pause", _since(now))
            self._emit(P.EV_VAD, P.VadMsg("speech_start", _ms(ev.start_sample), None, _ms(ev.at_sample)))

    def _on_speech_ended(self, ev: SpeechEnded) -> None:
        self._emit(P.EV_VAD, P.VadMsg("speech_end", _ms(ev.start_sample), _ms(ev.end_sample), _ms(ev.at_sample)))
        self._observe("vad_decision", _ms(ev.at_sample - ev.end_sample))
        lo = ev.audio_start_sample - _FRAME_CONTEXT_SAMPLES
        frames = tuple(f for f in self.frames if lo <= f.at_sample <= ev.at_sample) or tuple(list(self.frames)[-1:])
        with self._lock:
            if self._echo_utterance:
                self._echo_utterance = False
                if self.metrics:
                    self.metrics.echo_suppressed.inc()
                self._emit(P.EV_JUDGEMENT, P.JudgementMsg(None, False, "echo", {}))
                log.info("session %s: speech taken for the assistant's echo; ignored", self.id)
                return
            utterance = _Utterance(ev, frames, time.monotonic())
            if self._judging is not None:
                self._waiting = utterance  # judged once the current verdict is in (latest wins)
                return
        self._judge(utterance)
        if self.options.record_dir:
            self._record(ev.audio, f"{self.id}-{self._turns}")

    # ------------------------------------------------------------------ turns and interruption

    def _audible(self) -> bool:
        """A reply is being generated, sent or still playing on the client (or is paused)."""
        reply = self._reply
        return reply is not None and (
            not reply.ended or self._paused or bool(self._backlog) or time.monotonic() < self._play_until
        )

    def _new_reply(self, source: Literal["voice", "text"], t_end: float) -> _Reply:
        self._turns += 1
        self._epochs += 1
        return _Reply(f"{self.id}-{self._turns}", self._epochs, source, t_end)

    def _judge(self, utt: _Utterance) -> None:
        """Hand an utterance to the engine; the old reply keeps its place until the verdict."""
        ev = utt.event
        with self._lock:
            reply = self._judging = self._new_reply("voice", utt.t_end)
            self._recent_replies.append(reply.reply_id)
            request = TurnRequest(reply.reply_id, reply.epoch, ev.audio, utt.frames, None,
                                  ev.audio_start_sample, ev.end_sample)
        self._count_turn(request)
        self.conversation.start_turn(request)

    def _start_text_turn(self, text: str, frames: tuple[CameraFrame, ...]) -> None:
        """A typed question is always addressed: it interrupts at once and is answered."""
        with self._lock:
            self._interrupt_locked("text")
            reply = self._new_reply("text", time.monotonic())
            reply.judged = True
            self._activate(reply)
            request = TurnRequest(reply_id=reply.reply_id, epoch=reply.epoch, frames=frames, text=text)
        self._count_turn(request)
        self.conversation.start_turn(request)

    def _count_turn(self, request: TurnRequest) -> None:
        if self.metrics:
            self.metrics.turns.inc()
        log.info("session %s: %r", self.id, request)

    def _activate(self, reply: _Reply) -> None:
        """Make ``reply`` the one being spoken (lock held; any older one is already interrupted)."""
        self.epoch = reply.epoch
        self._reply = reply
        self._paused = False
        if reply.reply_id not in self._recent_replies:
            self._recent_replies.append(reply.reply_id)
        self._emit(P.EV_REPLY_START, P.ReplyStartMsg(reply.reply_id, reply.epoch, reply.source))

    def _interrupt(self, reason: InterruptReason) -> None:
        with self._lock:
            cancel_upto = self._interrupt_locked(reason)
        if cancel_upto is not None:
            self.conversation.cancel(cancel_upto)

    def _interrupt_locked(self, reason: InterruptReason, new_epoch: int | None = None,
                          drop_pending: bool = True) -> int | None:
        """Silence the reply in flight (and, unless told otherwise, drop utterances under judgement);
        returns the epoch to cancel up to, ``None`` when nothing was going on. Lock held; the caller
        cancels after releasing it."""
        pending = self._judging
        if drop_pending:
            self._judging = self._waiting = None
        audible = self._audible()
        if not audible and (pending is None or not drop_pending):
            return None
        if new_epoch is None:
            self._epochs += 1
            new_epoch = self._epochs
        self.epoch = new_epoch
        if audible:
            old = self._reply
            self._reply = None
            self._paused = False
            self._play_until = 0.0
            self._backlog.clear()
            self.echo.forget_playback()
            self._emit(P.EV_INTERRUPT, P.InterruptMsg(self.epoch, old.reply_id if old else None, reason))
            if self.metrics:
                self.metrics.interruptions.inc()
            log.info("session %s: interrupted reply (%s), epoch now %d", self.id, reason, self.epoch)
        return new_epoch - 1

    def _accept(self, reply: _Reply) -> None:
        """The judged utterance is a query: the old reply (if any) is cut and this one starts."""
        with self._lock:
            if self._judging is not reply:
                return
            self._judging = None
            reply.judged = True
            cancel_upto = self._interrupt_locked("barge_in", new_epoch=reply.epoch, drop_pending=False)
            self._activate(reply)
        if cancel_upto is not None:
            self.conversation.cancel(cancel_upto)
        self._next_waiting()

    def _reject(self, reply: _Reply, why: str, timings: dict[str, float]) -> None:
        """Not a query (☟, too short, failed): nothing is cut; a paused reply resumes where it stopped."""
        with self._lock:
            if self._judging is not reply:
                return
            self._judging = None
            self._emit(P.EV_JUDGEMENT, P.JudgementMsg(reply.reply_id, False, why, timings))
            if self.metrics and why in ("state_token", "too_short"):
                self.metrics.not_addressed.inc()
            if self._paused and self._reply is not None:
                self._paused = False
                self._play_until = time.monotonic() + self._paused_left
                self._emit(P.EV_RESUME, P.PauseMsg(self._reply.reply_id, self._reply.epoch))
                if self.metrics:
                    self.metrics.false_interruptions.inc()
        self._next_waiting()

    def _next_waiting(self) -> None:
        with self._lock:
            utt, self._waiting = self._waiting, None
        if utt is not None:
            self._judge(utt)

    # ------------------------------------------------------------------ outbound (engine + emit thread)

    def _sink(self, event: ReplyEvent) -> None:
        """Engine -> session; any thread. Stale events are dropped here already when possible."""
        if self._closed or (not isinstance(event, EngineError) and event.epoch < self.epoch):
            return
        self._queue.put(event)

    def _emit_loop(self) -> None:
        try:
            while not self._closed:
                try:
                    item = self._queue.get(timeout=self._next_wait())
                except queue.Empty:
                    item = None
                if item is _CLOSE:
                    return
                if item is not None and item is not _WAKE:
                    self._deliver(item)
                self._pump_audio()
                if item is None:
                    self._check_idle()
        except Exception:  # a bug here must not pass silently; the session is closed below
            log.exception("session %s: emit loop failed", self.id)
            self._disconnect()

    def _next_wait(self) -> float:
        with self._lock:
            if self._backlog and not self._paused:
                return max(0.0, self._play_until - time.monotonic() - self.options.playback_lead_ms / 1000)
        return self._idle_wait()

    def _current(self, event: AudioChunk | TextDelta | ReplyEnd | Judgement) -> _Reply | None:
        for reply in (self._reply, self._judging):
            if reply is not None and event.epoch == reply.epoch and event.reply_id == reply.reply_id:
                return reply
        return None

    def _deliver(self, event: ReplyEvent) -> None:
        if isinstance(event, EngineError):
            self._on_engine_error(event)
            return
        with self._lock:
            reply = self._current(event)
        if reply is None:
            return
        if reply is self._judging:
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
        with self._lock:
            if self._current(event) is not reply or reply is not self._reply:
                return
            since_turn_end = _since(reply.t_turn_end)
            if isinstance(event, Judgement):
                return
            if isinstance(event, AudioChunk):
                self._backlog.append(event)
            elif isinstance(event, TextDelta):
                reply.timings.setdefault("first_text", since_turn_end)
                self._emit(P.EV_REPLY_TEXT, P.ReplyTextMsg(event.reply_id, event.epoch, event.text))
            else:
                self._finish(reply, event, since_turn_end)

    def _finish(self, reply: _Reply, event: ReplyEnd, since_turn_end: float) -> None:
        """The engine ended ``reply`` (lock held)."""
        reply.ended = True
        self._touch()
        timings = {"reply_total": since_turn_end, **reply.timings}
        timings |= {f"engine_{k}": float(v) for k, v in event.timings_ms.items()}
        reply.timings = timings
        self._observe("first_clause", event.timings_ms.get("first_clause"))
        log.info("session %s: turn %s %s, timeline %s", self.id, reply.reply_id, event.reason, timings)
        if not self._backlog:
            self._emit(P.EV_REPLY_END, P.ReplyEndMsg(event.reply_id, event.epoch, event.reason, timings))
        else:
            self._backlog.append(event)  # type: ignore[arg-type]  # sent after the last chunk

    def _pump_audio(self) -> None:
        """Send backlog audio, staying ``playback_lead_ms`` ahead of the client's playback; not while paused."""
        lead = self.options.playback_lead_ms / 1000
        with self._lock:
            while self._backlog and not self._paused and not self._closed:
                item = self._backlog[0]
                reply = self._reply
                if reply is None or item.epoch != reply.epoch or item.reply_id != reply.reply_id:
                    self._backlog.popleft()  # stale
                    continue
                if isinstance(item, ReplyEnd):
                    self._backlog.popleft()
                    self._emit(P.EV_REPLY_END, P.ReplyEndMsg(item.reply_id, item.epoch, item.reason, reply.timings))
                    continue
                now = time.monotonic()
                if self._play_until - now - lead > 0:
                    return
                self._backlog.popleft()
                if "first_audio" not in reply.timings:
                    reply.timings["first_audio"] = _since(reply.t_turn_end)
                    self._observe("first_audio_sent", reply.timings["first_audio"])
                header = P.ReplyAudioHeader(item.reply_id, item.epoch, reply.seq, item.num_samples)
                reply.seq += 1
                start = max(self._play_until, now)
                self._play_until = start + item.num_samples / REPLY_SAMPLE_RATE
                self.echo.note_playback(item.pcm, start, self._play_until)
                self._send(P.EV_REPLY_AUDIO, header.to_wire(), item.pcm)

    def _on_engine_error(self, event: EngineError) -> None:
        log.error("session %s: engine error on %s: %s", self.id, event.reply_id, event.message)
        if self.metrics:
            self.metrics.engine_errors.inc()
        with self._lock:
            reply, pending = self._reply, self._judging
            if reply is not None and event.reply_id in (None, reply.reply_id):
                reply.ended = True
        if pending is not None and event.reply_id in (None, pending.reply_id):
            self._reject(pending, "error", {})
        self.send_error("engine", event.message, fatal=event.fatal)

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _CLOSE:  # keep the stop request
                self._queue.put(item)
                return

    def _observe(self, stage: str, ms: float | None) -> None:
        if self.metrics:
            self.metrics.observe(stage, ms)

    def _idle_wait(self) -> float:
        return max(0.05, self._last_activity + self.options.timeout - time.monotonic())

    def _check_idle(self) -> None:
        with self._lock:
            if self._audible() or self._judging is not None:
                self._touch()
                return
            idle = time.monotonic() - self._last_activity >= self.options.timeout
        if idle and not self._closed:
            log.info("session %s: idle for %gs, closing", self.id, self.options.timeout)
            self.send_error("idle_timeout", f"no activity for {self.options.timeout:g} s; session closed", fatal=True)
            self._disconnect()

    def _touch(self) -> None:
        self._last_activity = time.monotonic()

    def _emit(self, event: str, msg: P.Outbound) -> None:
        self._send(event, msg.to_wire())

    def send_error(self, code: P.ErrorCode, message: str, fatal: bool = False) -> None:
        """Tell this client what went wrong (rate-limited) and log it; never raises."""
        if not (fatal or self._error_bucket.take()):
            self._errors_suppressed += 1  # a flood must not become a log flood either
            return
        suppressed, self._errors_suppressed = self._errors_suppressed, 0
        log.warning("session %s: %s: %s%s", self.id, code, message,
                    f" ({suppressed} similar errors suppressed)" if suppressed else "")
        try:
            self._emit(P.EV_ERROR, P.ErrorMsg(code, message, fatal))
        except Exception:  # the socket may already be gone
            log.debug("session %s: could not send error", self.id, exc_info=True)

    def _record(self, audio: np.ndarray, reply_id: str) -> None:
        """Operator opt-in (--record_dir): keep the utterance as a 16 kHz WAV."""
        path = Path(self.options.record_dir or ".") / f"{reply_id}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(MIC_SAMPLE_RATE)
            w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Cancel everything, stop the emit thread and release the conversation. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.listening = False
            self._reply = self._judging = None
            self._backlog.clear()
            self._drain()
            self._queue.put(_CLOSE)
        try:
            self.conversation.close()
        except Exception:
            log.exception("session %s: conversation.close failed", self.id)
        if threading.current_thread() is not self._thread:
            self._thread.join(_JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("session %s: emit thread still running after %gs", self.id, _JOIN_TIMEOUT_S)
        log.info("session %s closed", self.id)


def _ms(samples: int) -> float:
    return round(samples * 1000 / MIC_SAMPLE_RATE, 1)


def _since(t: float) -> float:
    return round((time.monotonic() - t) * 1000, 1)
