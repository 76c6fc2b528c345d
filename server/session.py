"""One :class:`Session` per connection: the socket edge around that client's :class:`TurnMachine`.

It validates and rate-limits what the client sends, runs VAD on the mic, keeps camera frames, and hands
VAD events, controls, playback reports and engine events to the session's turn machine
(:mod:`server.turns`, where every turn and barge-in rule lives). The machine answers with actions: client
messages go into one queue drained by the session's **single writer thread** (the only code of ours that
writes this client's socket, so messages leave in exactly the order the machine made them); engine calls
are made by the thread that produced them, outside the lock.

Threads: Socket.IO handlers of one connection run in order on its reader thread (``async_handlers`` is
off); engine threads call the sink, which only queues; the writer thread runs engine events and clock
ticks through the machine and writes. One lock serialises every call into the machine.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import uuid
import wave
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.interface import MIC_SAMPLE_RATE, REPLY_SAMPLE_RATE, CameraFrame, Engine, ReplyEvent
from server import protocol as P
from server.metrics import ServerMetrics
from server.options import ServerOptions
from server.ratelimit import TokenBucket
from server.turns import (
    Action,
    Cancel,
    Clock,
    Close,
    ReportPlayback,
    ResetConversation,
    Send,
    Settle,
    StartTurn,
    TurnMachine,
    TurnSettings,
)
from vad.segmenter import SpeechEnded, SpeechPaused, SpeechResumed, SpeechStarted, UtteranceSegmenter
from vad.silero import SileroModel

log = logging.getLogger(__name__)

SendFn = Callable[..., None]
"""``send(event, *args)``: emit one Socket.IO event to this session's client."""

_CLOSE = object()  # stops the writer thread
_JOIN_TIMEOUT_S = 5.0
_FRAME_CONTEXT_SAMPLES = MIC_SAMPLE_RATE  # frames up to 1 s before an utterance still belong to it


@dataclass(frozen=True, slots=True)
class _Outgoing:
    """A message for the client, stamped when the machine made it (the pause latency is measured)."""

    send: Send
    made_at: float


class Session:
    """Everything of one connected client; see the module docstring for who does what."""

    def __init__(
        self,
        sid: str,
        options: ServerOptions,
        engine: Engine,
        send: SendFn,
        disconnect: Callable[[], None],
        vad_model: SileroModel | None = None,
        metrics: ServerMetrics | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.sid = sid
        self.id = uuid.uuid4().hex[:8]  # short id for logs and the client; never the socket sid
        self.options = options
        self.metrics = metrics
        self.clock = clock
        lim = options.limits
        self._send = send
        self._disconnect = disconnect
        self._lock = threading.RLock()
        self._queue: queue.Queue[Any] = queue.Queue()
        self._closed = False
        self.listening = False
        self.conversation = engine.open_conversation(self._sink)
        ahead = self.conversation.answers_ahead and 0 < options.vad.answer_ahead_ms < options.vad.end_silence_ms
        self.machine = TurnMachine(
            TurnSettings(self.id, options.playback_lead_ms / 1000, options.timeout, options.echo, ahead), clock, metrics)
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
        self._writer = threading.Thread(target=self._write_loop, name=f"session-writer-{self.id}", daemon=True)
        self._writer.start()
        self._enqueue(Send(P.EV_HELLO, (P.HelloMsg(
            session=self.id,
            mic_sample_rate=MIC_SAMPLE_RATE,
            reply_sample_rate=REPLY_SAMPLE_RATE,
            camera_fps=options.camera_fps,
            max_audio_packet_bytes=self._max_audio_bytes,
            max_frame_bytes=lim.max_frame_bytes,
            max_frame_side=lim.max_frame_side,
            max_frame_pixels=lim.max_frame_pixels,
            notice=engine.notice(),
        ).to_wire(),)))

    @property
    def epoch(self) -> int:
        """The session's current epoch (reply events older than it are dropped)."""
        return self.machine.epoch

    # ------------------------------------------------------------------ inbound (reader thread)

    def on_audio(self, data: Any) -> None:
        """A mic packet: validate, rate-limit, run VAD, hand speech start / end of turn to the machine."""
        self._require_listening("audio")
        pcm = P.parse_audio(data, self._max_audio_bytes)
        if not self._audio_bucket.take(pcm.size):
            raise P.ProtocolError("rate_limited", "mic audio arrives faster than real time allows; packet dropped")
        with self._lock:
            self.machine.echo.note_mic(pcm, self.clock())
        for event in self.segmenter.push(pcm):
            if isinstance(event, SpeechStarted):
                self._run(functools.partial(self.machine.speech_started, event))
            elif isinstance(event, SpeechPaused):
                utterance = event.utterance
                self._run(functools.partial(self.machine.speech_paused, utterance, self._frames_for(utterance)))
            elif isinstance(event, SpeechResumed):
                self._run(self.machine.speech_resumed)
            else:
                frames = self._frames_for(event)
                self._run(functools.partial(self.machine.speech_ended, event, frames))
                if self.options.record_dir:
                    self._record(event.audio, f"{self.id}-{event.audio_start_sample}")

    def on_frame(self, data: Any) -> None:
        """A camera JPEG: validate, rate-limit, keep it stamped with the mic clock."""
        self._require_listening("frame")
        if not self._frame_bucket.take():
            raise P.ProtocolError(
                "rate_limited", f"camera frames arrive faster than {self._frame_bucket.rate:g}/s; frame dropped"
            )
        lim = self.options.limits
        jpeg, _w, _h = P.parse_frame(data, lim.max_frame_bytes, lim.max_frame_side, lim.max_frame_pixels)
        self.frames.append(CameraFrame(jpeg=jpeg, at_sample=self.segmenter.samples_seen))

    def on_control(self, data: Any) -> dict[str, Any]:
        """A JSON control event; returns the acknowledgement sent back to the client."""
        if not self._control_bucket.take():
            raise P.ProtocolError("rate_limited", "too many control events; this one was dropped")
        ctl = P.parse_control(data, self.options.limits.max_text_chars)
        if ctl == P.SimpleControl("start"):
            with self._lock:
                self.machine.touch()
            if not self.listening:
                self.segmenter.reset()
                self.frames.clear()
                self.listening = True
        elif ctl == P.SimpleControl("stop"):
            self.listening = False
            self._run(self.machine.stop)
        elif ctl == P.SimpleControl("reset"):
            self._run(self.machine.reset)
        elif isinstance(ctl, P.TextControl):
            recent = [f for f in self.frames if f.at_sample >= self.segmenter.samples_seen - 2 * MIC_SAMPLE_RATE]
            frames = tuple(recent or list(self.frames)[-1:])
            self._run(lambda: self.machine.text(ctl.text, frames))
        elif isinstance(ctl, P.PlaybackControl):
            self._run(lambda: self.machine.playback(ctl.reply_id, ctl.samples))
        return {"ok": True, "type": ctl.type, "epoch": self.epoch, "listening": self.listening}

    def _require_listening(self, what: str) -> None:
        if not self.listening:
            raise P.ProtocolError("not_started", f"{what} received before 'start' (or after 'stop'); dropped")

    def _frames_for(self, ev: SpeechEnded) -> tuple[CameraFrame, ...]:
        lo = ev.audio_start_sample - _FRAME_CONTEXT_SAMPLES
        return tuple(f for f in self.frames if lo <= f.at_sample <= ev.at_sample) or tuple(list(self.frames)[-1:])

    # ------------------------------------------------------------------ machine ↔ edge

    def _run(self, step: Callable[[], list[Action]]) -> None:
        """Run one machine step under the lock; queue its messages; make its engine calls after."""
        with self._lock:
            if self._closed:
                return
            calls = [a for a in step() if not self._queued(a)]
        for action in calls:
            self._call(action)

    def _queued(self, action: Action) -> bool:
        """Queue ``action`` for the writer if it is a client message (lock held)."""
        if isinstance(action, Send):
            self._queue.put(_Outgoing(action, self.clock()))
            return True
        return False

    def _enqueue(self, send: Send) -> None:
        with self._lock:
            self._queued(send)

    def _call(self, action: Action) -> None:
        """Carry out an engine call (or the close) of the machine."""
        if isinstance(action, StartTurn):
            self.conversation.start_turn(action.request)
        elif isinstance(action, Cancel):
            self.conversation.cancel(action.upto)
        elif isinstance(action, Settle) and action.confirmed:
            self.conversation.confirm_turn(action.reply_id)
        elif isinstance(action, Settle):
            self.conversation.withdraw_turn(action.reply_id)
        elif isinstance(action, ResetConversation):
            self.conversation.reset()
        elif isinstance(action, ReportPlayback):
            self.conversation.playback_report(action.reply_id, action.samples)
        elif isinstance(action, Close):
            self.send_error(action.code, action.message, fatal=True)
            self._queue.put(self._disconnect)  # after the error has been written

    def _sink(self, event: ReplyEvent) -> None:
        """Engine -> session, from any thread: only queued (the writer runs it through the machine)."""
        if not self._closed:
            self._queue.put(event)

    # ------------------------------------------------------------------ the writer thread

    def _write_loop(self) -> None:
        try:
            while True:
                with self._lock:
                    wait = self.machine.next_deadline()
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    item = None
                if item is _CLOSE:
                    return
                if isinstance(item, _Outgoing):
                    self._write(item)
                    continue  # keep draining in order; the clock is looked at once the queue is empty
                if isinstance(item, threading.Event):  # a flush barrier: everything before it is written
                    item.set()
                    continue
                if callable(item):  # the disconnect after an idle close
                    item()
                    self.close()  # ends this loop even if the disconnect did not reach this session
                    continue
                if item is not None:
                    self._run(functools.partial(self.machine.engine_event, item))
                self._run(self.machine.tick)
        except Exception:  # a bug here must not pass silently; the session is closed by the server
            log.exception("session %s: writer failed", self.id)
            self._disconnect()

    def _write(self, item: _Outgoing) -> None:
        send = item.send
        if self._closed and send.event != P.EV_ERROR:
            return
        if send.event == P.EV_PAUSE and self.metrics:
            self.metrics.observe("barge_in_pause", round((self.clock() - item.made_at) * 1000, 1))
        try:
            self._send(send.event, *send.args)
        except Exception:  # the socket may be gone; the server closes the session on disconnect
            log.debug("session %s: could not send %s", self.id, send.event, exc_info=True)

    def flush(self, timeout: float = 2.0) -> None:
        """Wait until every message queued so far is written (before an acknowledgement goes out, so
        the client sees a handler's messages before its ack, as if one thread had written both)."""
        if self._closed or threading.current_thread() is self._writer:
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    # ------------------------------------------------------------------ errors, recording, teardown

    def send_error(self, code: P.ErrorCode, message: str, fatal: bool = False) -> None:
        """Tell this client what went wrong (rate-limited) and log it; never raises."""
        if not (fatal or self._error_bucket.take()):
            self._errors_suppressed += 1  # a flood must not become a log flood either
            return
        suppressed, self._errors_suppressed = self._errors_suppressed, 0
        log.warning("session %s: %s: %s%s", self.id, code, P.cut(message, 300),
                    f" ({suppressed} similar errors suppressed)" if suppressed else "")
        self._enqueue(Send(P.EV_ERROR, (P.ErrorMsg(code, message, fatal).to_wire(),)))

    def _record(self, audio: np.ndarray, name: str) -> None:
        """Operator opt-in (--record_dir): keep the utterance as a 16 kHz WAV."""
        path = Path(self.options.record_dir or ".") / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(MIC_SAMPLE_RATE)
            w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())

    def close(self) -> None:
        """Cancel everything, stop the writer and release the conversation. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.listening = False
            self._queue.put(_CLOSE)
        try:
            self.conversation.close()
        except Exception:
            log.exception("session %s: conversation.close failed", self.id)
        if threading.current_thread() is not self._writer:
            self._writer.join(_JOIN_TIMEOUT_S)
            if self._writer.is_alive():
                log.warning("session %s: writer still running after %gs", self.id, _JOIN_TIMEOUT_S)
        log.info("session %s closed", self.id)
