"""Duplex pieces without vLLM: frame choice, heard-text mapping, options, echo guard, metrics, and the
session's barge-in state machine driven by a fake engine that judges on the test's command."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from engine.duplex.frames import pick_frames, square_frame
from engine.duplex.heard import SpokenLog
from engine.duplex.options import DuplexOptions
from engine.interface import AudioChunk, CameraFrame, Conversation, Engine, Judgement, ReplyEnd, TurnRequest
from engine.llm.errors import ImageInputError
from server.echo import EchoGuard, EchoOptions
from server.metrics import ServerMetrics
from server.options import LimitOptions, ServerOptions
from server.session import Session
from tests.fakes.fake_engine import tone_chunk
from tests.fakes.harness import load_wav, wait_until


def jpeg(w: int, h: int, color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "JPEG")
    return buf.getvalue()


def test_frames_are_bounded_evenly_spaced_and_from_the_utterance():
    frames = [CameraFrame(b"x", at) for at in range(0, 16000 * 10, 8000)]  # 2 per second for 10 s
    picked = pick_frames(frames, 16000 * 2, 16000 * 6, 3)
    assert [f.at_sample for f in picked] == [32000, 64000, 96000]
    assert pick_frames(frames, 16000 * 2, 16000 * 6, 1)[0].at_sample == 96000  # the latest one
    assert pick_frames(frames, 10**9, 10**9 + 1, 2) == [frames[-1]]  # none inside: the latest stands in
    assert pick_frames(frames, 0, 10, 0) == [] and pick_frames([], 0, 10, 2) == []


def test_frames_keep_their_aspect_when_squared():
    im = square_frame(jpeg(640, 320), 448)
    assert im.size == (448, 448)
    px = np.asarray(im)
    assert px[0, 224].max() < 30 and px[224, 224, 0] > 150  # black bars above, the picture in the middle
    assert (px[:, 224, 0] > 150).sum() == pytest.approx(224, abs=4)  # 2:1 kept: 448 wide, 224 high
    with pytest.raises(ImageInputError):
        square_frame(b"\xff\xd8\xffnot really", 448)


def test_heard_text_follows_the_played_samples():
    log = SpokenLog()
    log.add_chunk(["Hello there."], 1000)
    log.add_chunk(["Hello there.", "How are you doing today?"], 2000)
    log.add_chunk(["Hello there.", "How are you doing today?"], 3000)
    assert log.total_samples == 3000
    assert log.heard(0) == ""
    assert log.heard(1000) == "Hello there."
    assert log.heard(2000) == "Hello there. How are"  # half of the second clause's audio: half its words
    assert log.heard(5000) == "Hello there. How are you doing today?"


def test_duplex_options_are_checked():
    from engine.duplex.engine import check_judge_states

    with pytest.raises(ValueError):
        DuplexOptions(awakening="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        check_judge_states(("☜",))
    with pytest.raises(ValueError):
        check_judge_states(())
    # unset: the engine judges with the model; the launcher answers everything on the random checkpoint
    assert DuplexOptions().awakening is None and DuplexOptions().streaming


def test_echo_guard_compares_mic_with_what_is_playing():
    guard = EchoGuard(EchoOptions(ratio=0.25))
    loud = (0.3 * 32767 * np.sin(np.arange(2400) / 3)).astype("<i2")
    guard.note_playback(loud.tobytes(), 0.0, 1.0)
    guard.note_mic((loud[:320] * 0.1).astype(np.int16), 0.9)  # the speaker's leak, -20 dB
    assert guard.is_echo(1.0)
    guard.note_mic((loud[:320] * 0.8).astype(np.int16), 0.95)  # someone talking close to the mic
    assert not guard.is_echo(1.0)
    quiet = EchoGuard(EchoOptions())
    quiet.note_mic((loud[:320] * 0.01).astype(np.int16), 0.9)
    assert not quiet.is_echo(1.0)  # nothing playing: never echo
    assert not EchoGuard(EchoOptions(guard=False)).is_echo(1.0)


def test_metrics_registries_are_per_server():
    a, b = ServerMetrics(lambda: 1, lambda: 1), ServerMetrics(lambda: 2, lambda: 0)
    a.interruptions.inc()
    a.observe("judge", 120.0)
    text_a, text_b = a.exposition().decode(), b.exposition().decode()
    assert "vita_interruptions_total 1.0" in text_a and "vita_interruptions_total 0.0" in text_b
    assert 'vita_turn_stage_seconds_count{stage="judge"} 1.0' in text_a
    assert "vita_active_sessions 2.0" in text_b and "vita_engine_healthy 0.0" in text_b


# ---------------------------------------------------------------- session state machine


class JudgedConversation(Conversation):
    """Records turns; the test decides each verdict with :meth:`verdict`."""

    def __init__(self, sink) -> None:
        self.sink = sink
        self.requests: list[TurnRequest] = []
        self.cancels: list[int] = []
        self.played: list[tuple[str, int]] = []

    def start_turn(self, request: TurnRequest) -> None:
        self.requests.append(request)
        if request.text:
            self.speak(request, seconds=3.0)

    def speak(self, req: TurnRequest, seconds: float) -> None:
        n = 960
        for seq, off in enumerate(range(0, int(seconds * 24000), n)):
            self.sink(AudioChunk(req.reply_id, req.epoch, seq, tone_chunk(n, off, 300)))
        self.sink(ReplyEnd(req.reply_id, req.epoch, "done"))

    def verdict(self, i: int, addressed: bool) -> None:
        req = self.requests[i]
        self.sink(Judgement(req.reply_id, req.epoch, addressed, "state_token", {"judge": 5.0}))
        if addressed:
            self.speak(req, seconds=1.0)
        else:
            self.sink(ReplyEnd(req.reply_id, req.epoch, "not_addressed"))

    def cancel(self, epoch: int) -> None:
        self.cancels.append(epoch)

    def playback_report(self, reply_id: str, samples_played: int) -> None:
        self.played.append((reply_id, samples_played))

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class JudgedEngine(Engine):
    def __init__(self) -> None:
        self.conv: JudgedConversation | None = None

    def open_conversation(self, sink):
        self.conv = JudgedConversation(sink)
        return self.conv


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple]] = []
        self.lock = threading.Lock()

    def send(self, event: str, *args) -> None:
        with self.lock:
            self.sent.append((event, args))

    def names(self) -> list[str]:
        with self.lock:
            return [e for e, _ in self.sent]


@pytest.fixture
def duplex_session():
    engine, wire = JudgedEngine(), Wire()
    options = ServerOptions(no_tls=True, playback_lead_ms=3000, echo=EchoOptions(guard=False),
                            limits=LimitOptions(audio_rate_factor=1000, audio_burst_s=1000))
    s = Session("sid", options, engine, send=wire.send, disconnect=lambda: None)
    s.on_control({"type": "start"})
    yield s, engine.conv, wire
    s.close()


def speak(session: Session, name: str = "question_en", silence_s: float = 0.8) -> None:
    pcm = np.concatenate([load_wav(name), np.zeros(int(silence_s * 16000), np.int16)])
    for off in range(0, pcm.size, 640):
        session.on_audio(pcm[off : off + 640].tobytes())


def test_not_addressed_speech_pauses_then_resumes_the_reply(duplex_session):
    s, conv, wire = duplex_session
    s.on_control({"type": "text", "text": "talk"})
    assert wait_until(lambda: "reply_audio" in wire.names())
    speak(s)
    assert wait_until(lambda: "pause" in wire.names()) and len(conv.requests) == 2
    conv.verdict(1, addressed=False)
    assert wait_until(lambda: "resume" in wire.names())
    names = wire.names()
    assert "interrupt" not in names and conv.cancels == []
    assert names.index("pause") < names.index("judgement") < names.index("resume")
    old = conv.requests[0].reply_id
    sent_of_old = lambda: sum(1 for e, a in list(wire.sent) if e == "reply_audio" and a[0]["reply_id"] == old)  # noqa: E731
    assert wait_until(lambda: sent_of_old() == 75, timeout=10)  # all 3 s (75 chunks) still went out: nothing lost


def test_an_utterance_ending_during_a_judgement_waits_for_it(duplex_session):
    s, conv, wire = duplex_session
    speak(s)
    speak(s, "question_zh")
    assert len(conv.requests) == 1  # the second waits: one judgement at a time
    conv.verdict(0, addressed=False)
    assert wait_until(lambda: len(conv.requests) == 2)
    conv.verdict(1, addressed=True)
    assert wait_until(lambda: "reply_end" in wire.names())
    starts = [a[0] for e, a in wire.sent if e == "reply_start"]
    assert [r["reply_id"] for r in starts] == [conv.requests[1].reply_id]
    assert "interrupt" not in wire.names()  # nothing was playing: nothing to cut


def test_addressed_speech_interrupts_with_nothing_stale_after(duplex_session):
    s, conv, wire = duplex_session
    s.on_control({"type": "text", "text": "talk"})
    assert wait_until(lambda: "reply_audio" in wire.names())
    old = conv.requests[0]
    speak(s)
    conv.verdict(1, addressed=True)
    assert wait_until(lambda: "interrupt" in wire.names())
    conv.sink(AudioChunk(old.reply_id, old.epoch, 999, tone_chunk(960, 0, 300)))  # late chunk of the old reply
    new = conv.requests[1]
    assert wait_until(lambda: any(e == "reply_end" and a[0]["reply_id"] == new.reply_id for e, a in list(wire.sent)),
                      timeout=10)
    i = wire.names().index("interrupt")
    cut = wire.sent[i][1][0]
    assert conv.cancels == [cut["epoch"] - 1]
    stale = [a for e, a in wire.sent[i:] if e.startswith("reply_") and a[0]["epoch"] < cut["epoch"]]
    assert stale == []
