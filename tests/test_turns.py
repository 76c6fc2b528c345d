"""The turn machine on virtual time: barge-in, pause/resume, echo, stale events, queueing, idle close.

No thread, no socket, no wall clock: the clock is a number the test moves, the engine is the test.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.interface import AudioChunk, EngineError, Judgement, ReplyEnd, TextDelta, TurnRequest
from server import protocol as P
from server.echo import EchoOptions
from server.turns import (
    Cancel,
    Close,
    ReportPlayback,
    ResetConversation,
    Send,
    Settle,
    StartTurn,
    TurnMachine,
    TurnSettings,
)
from vad.segmenter import SpeechEnded, SpeechStarted

CHUNK_S = 0.04  # 960 samples at 24 kHz


class FakeClock:
    """Virtual seconds."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def tone(seconds: float = CHUNK_S, amplitude: int = 8000) -> bytes:
    n = int(seconds * 24000)
    return (amplitude * np.sin(np.arange(n) * 0.1)).astype("<i2").tobytes()


class Harness:
    """A machine plus what it said, on a fake clock."""

    def __init__(self, lead_s: float = 0.3, idle_s: float = 60.0, echo: bool = False, ahead: bool = False) -> None:
        self.clock = FakeClock()
        self.m = TurnMachine(TurnSettings("s1", lead_s, idle_s, EchoOptions(guard=echo), ahead), self.clock)
        self.actions: list[object] = []

    def do(self, actions: list) -> list:
        self.actions += actions
        return actions

    def sent(self, event: str | None = None) -> list[tuple]:
        return [a.args for a in self.actions if isinstance(a, Send) and (event is None or a.event == event)]

    def names(self) -> list[str]:
        return [a.event for a in self.actions if isinstance(a, Send)]

    def requests(self) -> list:
        return [a.request for a in self.actions if isinstance(a, StartTurn)]

    def cancels(self) -> list[int]:
        return [a.upto for a in self.actions if isinstance(a, Cancel)]

    # user side
    def talk_start(self) -> None:
        self.do(self.m.speech_started(SpeechStarted(16000, 18560)))

    def talk_end(self) -> None:
        audio = np.zeros(16000, np.float32)
        self.do(self.m.speech_ended(SpeechEnded(16000, 32000, 40000, audio, 11200, "silence"), ()))

    def talk_pause(self, end_sample: int = 32000) -> None:
        audio = np.zeros(16000, np.float32)
        self.do(self.m.speech_paused(SpeechEnded(16000, end_sample, end_sample + 2400, audio, 11200, "silence"), ()))

    def speak(self) -> None:
        self.talk_start()
        self.clock.advance(1.0)
        self.talk_end()

    # engine side
    def engine(self, event) -> list:
        return self.do(self.m.engine_event(event))

    def stream_reply(self, request, seconds: float, end: bool = True) -> None:
        """The engine sends ``seconds`` of audio at once (faster than real time)."""
        for i in range(round(seconds / CHUNK_S)):
            self.engine(AudioChunk(request.reply_id, request.epoch, i, tone()))
        if end:
            self.engine(ReplyEnd(request.reply_id, request.epoch, "done"))

    def run(self, seconds: float, step: float = 0.01) -> None:
        """Let virtual time pass, ticking like the writer thread does."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)
            self.do(self.m.tick())


def test_typed_reply_is_paced_a_little_ahead_of_playback_and_ends_after_its_audio() -> None:
    h = Harness(lead_s=0.3)
    h.do(h.m.text("hello", ()))
    (req,) = h.requests()
    assert h.names() == ["reply_start"]
    h.engine(TextDelta(req.reply_id, req.epoch, "Hi"))
    h.stream_reply(req, seconds=2.0)
    # Only the lead's worth went out at once, and reply_end waits for the last chunk.
    assert len(h.sent("reply_audio")) == 8  # until the client holds more than the lead: 8 × 40 ms > 300 ms
    assert "reply_end" not in h.names()
    h.run(1.0)
    assert 0.3 + 1.0 <= len(h.sent("reply_audio")) * CHUNK_S <= 0.3 + 1.0 + 2 * CHUNK_S
    h.run(1.5)
    assert len(h.sent("reply_audio")) == 50 and h.names()[-1] == "reply_end"
    seqs = [header["seq"] for header, _pcm in h.sent("reply_audio")]
    assert seqs == list(range(50))


def test_barge_in_pauses_at_once_and_interrupts_on_an_addressed_verdict() -> None:
    h = Harness()
    h.do(h.m.text("talk", ()))
    first = h.requests()[0]
    h.stream_reply(first, seconds=3.0)
    h.run(0.5)
    h.talk_start()
    assert h.names()[-2:] == ["pause", "vad"]  # paused in the same step as the speech start
    sent_before = len(h.sent("reply_audio"))
    h.run(1.0)
    assert len(h.sent("reply_audio")) == sent_before  # nothing is sent while paused
    h.talk_end()
    second = h.requests()[1]
    assert second.epoch > first.epoch and h.cancels() == []  # nothing is cut before the verdict
    h.engine(Judgement(second.reply_id, second.epoch, True, "state_token"))
    interrupt = h.sent("interrupt")[-1][0]
    assert interrupt == {"epoch": second.epoch, "reply_id": first.reply_id, "reason": "barge_in"}
    assert h.cancels() == [second.epoch - 1]
    assert h.names()[-1] == "reply_start"
    # A late chunk of the old reply is dropped; the new one flows.
    mark = len(h.actions)
    h.engine(AudioChunk(first.reply_id, first.epoch, 99, tone()))
    h.stream_reply(second, seconds=0.2)
    later = [args[0] for args in (a.args for a in h.actions[mark:] if isinstance(a, Send))]
    assert later and all(m["reply_id"] == second.reply_id for m in later)


def test_not_addressed_speech_resumes_the_paused_reply_and_nothing_is_lost() -> None:
    h = Harness()
    h.do(h.m.text("talk", ()))
    first = h.requests()[0]
    h.stream_reply(first, seconds=3.0)
    h.run(0.5)
    h.speak()
    second = h.requests()[1]
    h.engine(Judgement(second.reply_id, second.epoch, False, "state_token"))
    names = h.names()
    assert names.index("pause") < names.index("judgement") < names.index("resume")
    assert "interrupt" not in names and h.cancels() == []
    h.run(4.0)
    assert len(h.sent("reply_audio")) == 75 and names.count("reply_start") == 1
    assert h.names()[-1] == "reply_end"


def test_the_assistants_own_echo_neither_pauses_nor_starts_a_turn() -> None:
    h = Harness(echo=True)
    h.do(h.m.text("talk", ()))
    first = h.requests()[0]
    h.stream_reply(first, seconds=2.0)
    for _ in range(30):  # the mic hears the reply at -20 dB while it plays
        h.clock.advance(0.02)
        h.m.echo.note_mic((np.frombuffer(tone(0.02), "<i2") // 10)[:320], h.clock())
        h.do(h.m.tick())
    h.speak()
    assert "pause" not in h.names() and len(h.requests()) == 1
    assert h.sent("judgement")[-1][0]["why"] == "echo"


def test_a_loud_barge_in_over_the_echo_still_pauses() -> None:
    h = Harness(echo=True)
    h.do(h.m.text("talk", ()))
    h.stream_reply(h.requests()[0], seconds=2.0)
    for _ in range(30):
        h.clock.advance(0.02)
        h.m.echo.note_mic(np.frombuffer(tone(0.02, 16000), "<i2")[:320], h.clock())
        h.do(h.m.tick())
    h.talk_start()
    assert "pause" in h.names()


def test_one_judgement_at_a_time_the_latest_utterance_waits() -> None:
    h = Harness()
    h.speak()
    h.speak()
    h.speak()  # replaces the one waiting
    assert len(h.requests()) == 1
    first = h.requests()[0]
    h.engine(Judgement(first.reply_id, first.epoch, False, "state_token"))
    assert len(h.requests()) == 2
    second = h.requests()[1]
    h.engine(Judgement(second.reply_id, second.epoch, True))
    assert [m[0]["reply_id"] for m in h.sent("reply_start")] == [second.reply_id]
    assert "interrupt" not in h.names()  # nothing was playing


def test_text_interrupts_and_drops_pending_judgements() -> None:
    h = Harness()
    h.do(h.m.text("one", ()))
    first = h.requests()[0]
    h.stream_reply(first, seconds=1.0, end=False)
    h.speak()
    judged = h.requests()[1]
    h.do(h.m.text("two", ()))
    assert h.sent("interrupt")[-1][0]["reason"] == "text"
    h.engine(Judgement(judged.reply_id, judged.epoch, True))  # too late: dropped
    assert [m[0]["reply_id"] for m in h.sent("reply_start")] == [first.reply_id, h.requests()[2].reply_id]


def test_stop_and_reset_silence_the_reply_and_reset_forgets() -> None:
    h = Harness()
    h.do(h.m.text("one", ()))
    h.stream_reply(h.requests()[0], seconds=1.0)
    h.do(h.m.stop())
    assert h.sent("interrupt")[-1][0]["reason"] == "stop"
    assert not h.m.audible()
    h.do(h.m.stop())  # nothing playing: nothing to say
    assert len(h.sent("interrupt")) == 1
    actions = h.do(h.m.reset())
    assert any(isinstance(a, ResetConversation) for a in actions)


def test_playback_reports_go_to_the_engine_and_unknown_replies_are_refused() -> None:
    h = Harness()
    h.do(h.m.text("one", ()))
    req = h.requests()[0]
    h.stream_reply(req, seconds=0.5)
    h.run(0.2)
    actions = h.do(h.m.playback(req.reply_id, 2400))
    assert ReportPlayback(req.reply_id, 2400) in actions
    assert "first_played" in h.m.reply.timings  # type: ignore[union-attr]
    with pytest.raises(P.ProtocolError, match="unknown reply"):
        h.m.playback("x" * 500, 1)
    try:
        h.m.playback("y" * 500, 1)
    except P.ProtocolError as exc:
        assert len(exc.message) < 200  # client strings are cut before they are echoed


def test_engine_error_rejects_the_pending_judgement_and_tells_the_client() -> None:
    h = Harness()
    h.speak()
    req = h.requests()[0]
    h.engine(EngineError(req.reply_id, req.epoch, "boom", fatal=False))
    assert h.sent("judgement")[-1][0]["why"] == "error"
    assert h.sent("error")[-1][0]["code"] == "engine"


def test_idle_session_closes_once_but_not_while_a_reply_plays() -> None:
    h = Harness(idle_s=5.0)
    h.do(h.m.text("one", ()))
    h.stream_reply(h.requests()[0], seconds=8.0)
    h.run(7.0)
    assert not any(isinstance(a, Close) for a in h.actions)  # playing is activity
    h.run(7.0)
    closes = [a for a in h.actions if isinstance(a, Close)]
    assert len(closes) == 1 and closes[0].code == "idle_timeout"
    h.run(10.0)
    assert len([a for a in h.actions if isinstance(a, Close)]) == 1
    assert 0 < h.m.next_deadline() <= 5.0


def test_a_turn_carries_the_span_of_the_speech_not_of_its_pre_and_post_roll() -> None:
    """The engine's too-short check goes by the span: a 0.25 s "yeah" arrives with 0.4 s of pre-roll and
    post-roll around it, which must not lift it over --min_utterance_ms (300 ms) and interrupt a reply."""
    t = Harness()
    t.talk_start()
    audio = np.zeros(4000 + 4800 + 1600, np.float32)  # pre-roll + 0.3 s speech + post-roll
    t.do(t.m.speech_ended(SpeechEnded(16000, 20000, 28000, audio, 11200, "silence"), ()))
    (req,) = t.requests()
    assert (req.start_sample, req.end_sample) == (16000, 20000)
    assert req.speech_ms() == 250.0 and req.audio.size / 16 > 600
    assert TurnRequest("r", 0, audio).speech_ms() == audio.size / 16  # no span: the audio's length


# ---------------------------------------------------------------------- answering ahead of the decision


def test_a_turn_answered_ahead_stays_unseen_until_the_decision_then_plays_at_once() -> None:
    h = Harness(ahead=True)
    h.do(h.m.text("talk", ()))
    first = h.requests()[0]
    h.stream_reply(first, seconds=3.0)
    h.run(0.5)
    h.talk_start()
    h.clock.advance(1.0)
    h.talk_pause()
    ahead = h.requests()[1]
    assert ahead.provisional and ahead.epoch > first.epoch
    mark = len(h.names())
    h.engine(Judgement(ahead.reply_id, ahead.epoch, True, "state_token", {"judge": 90.0}))
    h.engine(TextDelta(ahead.reply_id, ahead.epoch, "Sure"))
    for i in range(3):
        h.engine(AudioChunk(ahead.reply_id, ahead.epoch, i, tone()))
    h.run(0.3)
    # Nothing of it reached the client, the old reply is only paused, the engine was told nothing more.
    assert h.names()[mark:] == [] and h.cancels() == []
    assert not any(isinstance(a, Settle) for a in h.actions)
    h.talk_end()
    # The decision confirms it: the engine hears so, the old reply is cut, and the new one plays in this step.
    assert [a for a in h.actions if isinstance(a, Settle)] == [Settle(ahead.reply_id, confirmed=True)]
    assert h.cancels() == [ahead.epoch - 1]
    assert h.names()[mark:] == ["vad", "interrupt", "reply_start", "reply_text", "reply_audio", "reply_audio",
                                "reply_audio"]
    assert len(h.requests()) == 2  # no second request for the same utterance
    h.engine(ReplyEnd(ahead.reply_id, ahead.epoch, "done", {"first_audio": 200.0}))
    h.run(1.0)
    end = h.sent("reply_end")[-1][0]
    assert end["reply_id"] == ahead.reply_id and end["timings_ms"]["answered_ahead"] == pytest.approx(300, abs=1)
    assert end["timings_ms"]["first_audio"] == 0.0  # from the decision, as for every turn


def test_a_turn_answered_ahead_is_withdrawn_when_the_user_goes_on() -> None:
    h = Harness(ahead=True)
    h.talk_start()
    h.talk_pause(end_sample=24000)
    ahead = h.requests()[0]
    h.engine(Judgement(ahead.reply_id, ahead.epoch, True, "state_token"))
    h.do(h.m.speech_resumed())
    assert [a for a in h.actions if isinstance(a, Settle)] == [Settle(ahead.reply_id, confirmed=False)]
    mark = len(h.names())
    h.engine(AudioChunk(ahead.reply_id, ahead.epoch, 0, tone()))  # late output of the withdrawn turn: dropped
    h.engine(ReplyEnd(ahead.reply_id, ahead.epoch, "cancelled"))
    assert h.names()[mark:] == []
    h.clock.advance(1.0)
    h.talk_end()  # an end with no pause announced before it: judged as usual
    turn = h.requests()[1]
    assert not turn.provisional and turn.epoch > ahead.epoch
    h.engine(Judgement(turn.reply_id, turn.epoch, True, "state_token"))
    assert h.names()[-1] == "reply_start" and h.cancels() == []  # nothing was playing: nothing to cut


def test_a_decision_on_another_span_withdraws_the_turn_answered_ahead() -> None:
    h = Harness(ahead=True)
    h.talk_start()
    h.talk_pause(end_sample=30000)
    ahead = h.requests()[0]
    h.talk_end()  # ends at 32000: the pause announced another utterance (e.g. a max-length cut)
    assert [a for a in h.actions if isinstance(a, Settle)] == [Settle(ahead.reply_id, confirmed=False)]
    assert not h.requests()[1].provisional


def test_typed_text_or_stop_withdraws_the_turn_answered_ahead() -> None:
    for act in ("text", "stop", "reset"):
        h = Harness(ahead=True)
        h.talk_start()
        h.talk_pause()
        ahead = h.requests()[0]
        h.do(h.m.text("hi", ()) if act == "text" else getattr(h.m, act)())
        assert Settle(ahead.reply_id, confirmed=False) in h.actions, act
        h.engine(Judgement(ahead.reply_id, ahead.epoch, True, "state_token"))
        h.talk_end()
        assert Settle(ahead.reply_id, confirmed=True) not in h.actions, act


def test_no_turn_is_answered_ahead_while_one_is_judged_or_when_off() -> None:
    h = Harness(ahead=False)
    h.talk_start()
    h.talk_pause()
    assert h.requests() == []
    h = Harness(ahead=True)
    h.speak()  # judged now
    h.talk_start()
    h.talk_pause()
    assert [r.provisional for r in h.requests()] == [False]


def test_a_fatal_engine_error_of_a_turn_answered_ahead_is_not_held() -> None:
    h = Harness(ahead=True)
    h.talk_start()
    h.talk_pause()
    ahead = h.requests()[0]
    h.engine(EngineError(ahead.reply_id, ahead.epoch, "every engine died", fatal=True))
    assert any(isinstance(a, Close) for a in h.actions)
