"""Session behaviour without sockets: a Session wired to a list instead of a client."""

from __future__ import annotations

import threading
import wave

import numpy as np
import pytest

from engine.interface import AudioChunk, TextDelta
from server.options import LimitOptions, ServerOptions
from server.session import Session
from tests.fakes.fake_engine import FakeEngine, Script, tone_chunk
from tests.fakes.harness import load_wav, wait_until

FAST = LimitOptions(audio_rate_factor=1000, audio_burst_s=1000)  # audio pushed faster than real time


class Wire:
    """Collects what the session sends, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple]] = []
        self.lock = threading.Lock()
        self.disconnected = threading.Event()

    def send(self, event: str, *args) -> None:
        with self.lock:
            self.sent.append((event, args))

    def named(self, name: str) -> list[tuple]:
        with self.lock:
            return [a for e, a in self.sent if e == name]


@pytest.fixture
def make_session():
    made: list[Session] = []

    def make(script: Script | None = None, **opts):
        engine, wire = FakeEngine(script or Script(reply_seconds=1.0)), Wire()
        options = ServerOptions(no_tls=True, limits=FAST, **opts)
        s = Session("sid", options, engine, send=wire.send, disconnect=wire.disconnected.set)
        made.append(s)
        s.on_control({"type": "start"})
        return s, engine, wire

    yield make
    for s in made:
        s.close()


def feed(session: Session, pcm: np.ndarray) -> None:
    for off in range(0, pcm.size, 640):
        session.on_audio(pcm[off : off + 640].tobytes())


def speech_then_silence(name: str, silence_s: float = 0.8) -> np.ndarray:
    return np.concatenate([load_wav(name), np.zeros(int(silence_s * 16000), np.int16)])


def test_record_dir_is_the_only_way_audio_reaches_disk(make_session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s, engine, _ = make_session()
    feed(s, speech_then_silence("question_en"))
    assert engine.conversations[0].requests
    assert list(tmp_path.iterdir()) == []

    rec = tmp_path / "rec"
    s2, engine2, _ = make_session(record_dir=str(rec))
    feed(s2, speech_then_silence("question_en"))
    files = list(rec.glob("*.wav"))
    assert len(files) == 1
    with wave.open(str(files[0])) as w:
        assert w.getframerate() == 16000 and w.getnframes() == engine2.conversations[0].requests[0].audio.size


def test_speech_while_the_tail_still_plays_pauses_then_interrupts(make_session):
    s, engine, wire = make_session(Script(reply_seconds=2.0), playback_lead_ms=1500)
    feed(s, speech_then_silence("question_en"))
    assert wait_until(lambda: wire.named("reply_end"))  # the server has sent it all ...
    feed(s, load_wav("question_en")[12000:24000])  # ... but the client is still playing it
    # speech onset pauses the reply at once; nothing is cut before the utterance is judged
    first = wire.named("reply_start")[0][0]["reply_id"]
    assert wait_until(lambda: [a[0]["reply_id"] for a in wire.named("pause")] == [first])
    assert wire.named("interrupt") == [] and engine.conversations[0].cancels == []
    feed(s, np.zeros(16000, np.int16))  # the utterance ends; the (judgement-less) fake answers it
    assert wait_until(lambda: wire.named("interrupt"))
    interrupts = wire.named("interrupt")
    assert len(interrupts) == 1 and interrupts[0][0]["reason"] == "barge_in"
    assert engine.conversations[0].cancels == [interrupts[0][0]["epoch"] - 1]


def test_no_interrupt_when_nothing_is_playing(make_session):
    s, engine, wire = make_session(Script(reply_seconds=0.2), playback_lead_ms=0)
    feed(s, speech_then_silence("question_en", silence_s=2.0))
    assert wait_until(lambda: wire.named("reply_end"))
    assert wait_until(lambda: not s.machine.audible(), timeout=3)
    feed(s, speech_then_silence("question_en"))
    assert wire.named("interrupt") == [] and engine.conversations[0].cancels == []
    assert len(engine.conversations[0].requests) == 2


def test_late_events_of_a_cancelled_reply_are_dropped(make_session):
    s, engine, wire = make_session(Script(reply_seconds=5.0, chunk_interval_s=0.02))
    s.on_control({"type": "text", "text": "first"})
    assert wait_until(lambda: wire.named("reply_audio"))
    s.on_control({"type": "text", "text": "second"})
    old = engine.conversations[0].requests[0]
    sink = engine.conversations[0].sink
    sink(AudioChunk(old.reply_id, old.epoch, 999, tone_chunk(960, 0, 440)))
    sink(TextDelta(old.reply_id, old.epoch, "stale"))
    new = engine.conversations[0].requests[1]
    assert wait_until(lambda: sum(a[0]["reply_id"] == new.reply_id for a in wire.named("reply_audio")) >= 3)
    i = next(i for i, (e, _) in enumerate(wire.sent) if e == "interrupt")
    stale = [a for e, a in wire.sent[i:] if e.startswith("reply_") and a[0]["epoch"] <= old.epoch]
    assert stale == []


def test_frames_around_the_utterance_go_with_it(make_session):
    from tests.test_protocol import make_jpeg

    s, engine, _ = make_session()
    early, late = make_jpeg(32, 24), make_jpeg(64, 48)
    s.on_frame(early)  # at sample 0: more than 1 s before the utterance audio starts
    feed(s, np.zeros(16000 * 2, np.int16))
    s.on_frame(late)
    feed(s, speech_then_silence("question_en"))
    frames = engine.conversations[0].requests[0].frames
    assert [f.jpeg for f in frames] == [late]
    assert frames[0].at_sample == 32000
