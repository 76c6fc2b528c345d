"""One :class:`Session` per connection: it owns all of that client's state and its emit thread.

Threads: Socket.IO handlers for one connection run in order on its reader thread (``async_handlers``
is off) and call ``on_audio`` / ``on_frame`` / ``on_control``; engine threads call the sink, which only
queues; the session's emit thread delivers queued reply events, pacing audio a little ahead of real
time. Every reply emit and every epoch change happen under one lock, so once ``interrupt`` is sent no
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
    ReplyEnd,
    ReplyEvent,
    TextDelta,
    TurnRequest,
)
from server import protocol as P
from server.options import ServerOptions
from server.ratelimit import TokenBucket
from vad.segmenter import SpeechEnded, SpeechStarted, UtteranceSegmenter
from vad.silero import SileroModel

log = logging.getLogger(__name__)

Send = Callable[..., None]
"""``send(event, *args)``: emit one Socket.IO event to this session's client."""

_CLOSE = object()  # sentinel that stops the emit thread
_JOIN_TIMEOUT_S = 5.0
_FRAME_CONTEXT_SAMPLES = MIC_SAMPLE_RATE  # frames up to 1 s before an utterance still belong to it


@dataclass(slots=True)
class _Reply:
    """Book-keeping of the reply in flight (owned by the session, guarded by its lock)."""

    reply_id: str
    epoch: int
    source: Literal["voice", "text"]
    t_turn_end: float
    seq: int = 0
    ended: bool = False
    timings: dict[str, float] = field(default_factory=dict)


class Session:
    """Everything of one connected client: VAD, frames, the conversation, the reply in flight."""

    def __init__(
        self,
        sid: str,
        options: ServerOptions,
        engine: Engine,
        send: Send,
        disconnect: Callable[[], None],
        vad_model: SileroModel | None = None,
    ) -> None:
        self.sid = sid
        self.id = uuid.uuid4().hex[:8]  # short id for logs and the client; never the socket sid
        self.options = options
        lim = options.limits
        self._send = send
        self._disconnect = disconnect
        self._lock = threading.RLock()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._wake = threading.Event()
        self._closed = False
        self.listening = False
        self.epoch = 0
        self._reply: _Reply | None = None
        self._recent_replies: deque[str] = deque(maxlen=8)
        self._play_until = 0.0  # monotonic time at which the client runs out of sent reply audio
        self._last_activity = time.monotonic()
        self._turns = 0
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
        ))

    # ------------------------------------------------------------------ inbound (reader thread)

    def on_audio(self, data: Any) -> None:
        """A mic packet: validate, rate-limit, run VAD, act on speech start / end of turn."""
        self._require_listening("audio")
        pcm = P.parse_audio(data, self._max_audio_bytes)
        if not self._audio_bucket.take(pcm.size):
            raise P.ProtocolError("rate_limited", "mic audio arrives faster than real time allows; packet dropped")
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
            self._interrupt_if_active("stop")
        elif ctl == P.SimpleControl("reset"):
            self._touch()
            self._interrupt_if_active("reset")
            self.conversation.reset()
        elif isinstance(ctl, P.TextControl):
            self._touch()
            recent = [f for f in self.frames if f.at_sample >= self.segmenter.samples_seen - 2 * MIC_SAMPLE_RATE]
            frames = tuple(recent or list(self.frames)[-1:])
            self._start_turn("text", text=ctl.text, frames=frames, interrupt_reason="text")
        elif isinstance(ctl, P.PlaybackControl):
            if ctl.reply_id not in self._recent_replies:
                raise P.ProtocolError("bad_control", f"playback report for unknown reply {ctl.reply_id!r}")
            self.conversation.playback_report(ctl.reply_id, ctl.samples)
        return {"ok": True, "type": ctl.type, "epoch": self.epoch, "listening": self.listening}

    def _require_listening(self, what: str) -> None:
        if not self.listening:
            raise P.ProtocolError("not_started", f"{what} received before 'start' (or after 'stop'); dropped")

    def _on_speech_started(self, ev: SpeechStarted) -> None:
        self._touch()
        self._interrupt_if_active("barge_in")
        self._emit(P.EV_VAD, P.VadMsg("speech_start", _ms(ev.start_sample), None, _ms(ev.at_sample)))

    def _on_speech_ended(self, ev: SpeechEnded) -> None:
        self._emit(P.EV_VAD, P.VadMsg("speech_end", _ms(ev.start_sample), _ms(ev.end_sample), _ms(ev.at_sample)))
        lo = ev.audio_start_sample - _FRAME_CONTEXT_SAMPLES
        frames = tuple(f for f in self.frames if lo <= f.at_sample <= ev.at_sample) or tuple(list(self.frames)[-1:])
        reply_id = self._start_turn(
            "voice", audio=ev.audio, frames=frames, start=ev.audio_start_sample, end=ev.end_sample,
            interrupt_reason="barge_in",
        )
        if self.options.record_dir:
            self._record(ev.audio, reply_id)

    # ------------------------------------------------------------------ turns and interruption

    def _active(self) -> bool:
        reply = self._reply
        return reply is not None and (not reply.ended or time.monotonic() < self._play_until)

    def _interrupt_if_active(self, reason: Literal["barge_in", "text", "stop", "reset"]) -> None:
        with self._lock:
            if not self._active():
                return
            old = self._reply
            self.epoch += 1
            self._reply = None
            self._play_until = 0.0
            self._drain()
            self._wake.set()  # a paced chunk waiting in the emit thread wakes up and finds itself stale
            self._emit(P.EV_INTERRUPT, P.InterruptMsg(self.epoch, old.reply_id if old else None, reason))
        self.conversation.cancel(self.epoch - 1)
        log.info("session %s: interrupted reply (%s), epoch now %d", self.id, reason, self.epoch)

    def _start_turn(
        self,
        source: Literal["voice", "text"],
        *,
        interrupt_reason: Literal["barge_in", "text"],
        audio: np.ndarray | None = None,
        frames: tuple[CameraFrame, ...] = (),
        text: str | None = None,
        start: int = 0,
        end: int = 0,
    ) -> str:
        self._interrupt_if_active(interrupt_reason)
        with self._lock:
            self._turns += 1
            self.epoch += 1
            reply_id = f"{self.id}-{self._turns}"
            self._reply = _Reply(reply_id, self.epoch, source, time.monotonic())
            self._recent_replies.append(reply_id)
            self._emit(P.EV_REPLY_START, P.ReplyStartMsg(reply_id, self.epoch, source))
            request = TurnRequest(
                reply_id=reply_id,
                epoch=self.epoch,
                audio=audio if audio is not None else np.zeros(0, np.float32),
                frames=frames,
                text=text,
                start_sample=start,
                end_sample=end,
            )
        log.info("session %s: %r", self.id, request)
        self.conversation.start_turn(request)
        return reply_id

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _CLOSE:  # keep the stop request
                self._queue.put(item)
                return

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
                    item = self._queue.get(timeout=self._idle_wait())
                except queue.Empty:
                    self._check_idle()
                    continue
                if item is _CLOSE:
                    return
                self._deliver(item)
        except Exception:  # a bug here must not pass silently; the session is closed below
            log.exception("session %s: emit loop failed", self.id)
            self._disconnect()

    def _current(self, event: AudioChunk | TextDelta | ReplyEnd) -> _Reply | None:
        reply = self._reply
        if reply is None or event.epoch != reply.epoch or event.reply_id != reply.reply_id:
            return None
        return reply

    def _deliver(self, event: ReplyEvent) -> None:
        if isinstance(event, AudioChunk):
            self._deliver_audio(event)
            return
        with self._lock:
            if isinstance(event, EngineError):
                self._on_engine_error(event)
                return
            reply = self._current(event)
            if reply is None:
                return
            since_turn_end = _since(reply.t_turn_end)
            if isinstance(event, TextDelta):
                reply.timings.setdefault("first_text", since_turn_end)
                self._emit(P.EV_REPLY_TEXT, P.ReplyTextMsg(event.reply_id, event.epoch, event.text))
            else:
                reply.ended = True
                self._touch()
                timings = {"reply_total": since_turn_end, **reply.timings}
                timings |= {f"engine_{k}": float(v) for k, v in event.timings_ms.items()}
                self._emit(P.EV_REPLY_END, P.ReplyEndMsg(event.reply_id, event.epoch, event.reason, timings))

    def _deliver_audio(self, chunk: AudioChunk) -> None:
        lead = self.options.playback_lead_ms / 1000
        while True:
            self._wake.clear()
            with self._lock:
                reply = self._current(chunk)
                if reply is None or self._closed:
                    return
                now = time.monotonic()
                wait = self._play_until - now - lead
                if wait <= 0:
                    reply.timings.setdefault("first_audio", _since(reply.t_turn_end))
                    header = P.ReplyAudioHeader(chunk.reply_id, chunk.epoch, reply.seq, chunk.num_samples)
                    reply.seq += 1
                    self._play_until = max(self._play_until, now) + chunk.num_samples / REPLY_SAMPLE_RATE
                    self._send(P.EV_REPLY_AUDIO, header.to_wire(), chunk.pcm)
                    return
            # Pace: stay `lead` ahead of the client's playback; an interrupt or close wakes us at once.
            self._wake.wait(wait)

    def _on_engine_error(self, event: EngineError) -> None:
        log.error("session %s: engine error on %s: %s", self.id, event.reply_id, event.message)
        reply = self._reply
        if reply is not None and event.reply_id in (None, reply.reply_id):
            reply.ended = True
        self.send_error("engine", event.message, fatal=event.fatal)

    def _idle_wait(self) -> float:
        return max(0.05, self._last_activity + self.options.timeout - time.monotonic())

    def _check_idle(self) -> None:
        with self._lock:
            if self._active():
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
            self._reply = None
            self._drain()
            self._queue.put(_CLOSE)
            self._wake.set()
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
