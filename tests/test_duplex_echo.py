"""Echo guard: the assistant's own voice leaking from the speaker into the mic must not interrupt it.

The assistant here is a scripted fake that *speaks* (its reply audio is recorded speech), and the test
client loops what its simulated speaker plays back into its microphone at -16 dB, the leak of an
imperfect echo canceller, while real Silero VAD listens. The false-interruption rate is measured with
the guard off (it must be high, or the test proves nothing) and on (it must be zero), and a real
barge-in over the same echo must still get through.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.interface import REPLY_SAMPLE_RATE, AudioChunk, ReplyEnd, TextDelta, TurnRequest
from server.echo import EchoOptions
from server.options import ServerOptions
from tests.fakes.fake_engine import FakeConversation, FakeEngine
from tests.fakes.harness import RunningServer, load_wav
from tests.fakes.listener import ListeningClient

pytestmark = pytest.mark.slow

ECHO_GAIN = 0.15  # -16 dB: what leaks through an imperfect echo canceller
TRIALS = 3


def _voice() -> bytes:
    """Recorded speech at 24 kHz: the fake assistant's voice (about 12 s)."""
    x = np.concatenate([load_wav("question_en"), load_wav("two_turns")]).astype(np.float32)
    n = int(x.size * REPLY_SAMPLE_RATE / 16000)
    y = np.interp(np.arange(n) * 16000 / REPLY_SAMPLE_RATE, np.arange(x.size), x)
    return y.astype("<i2").tobytes()


class SpeakingConversation(FakeConversation):
    """Answers every turn with the recorded voice, in 40 ms chunks."""

    voice = _voice()

    def _produce(self, req: TurnRequest, stop) -> None:
        self.sink(TextDelta(req.reply_id, req.epoch, "(speech)"))
        step = 2 * REPLY_SAMPLE_RATE * 40 // 1000
        for seq, off in enumerate(range(0, len(self.voice), step)):
            if stop.is_set():
                break
            self.sink(AudioChunk(req.reply_id, req.epoch, seq, self.voice[off : off + step]))
        self.sink(ReplyEnd(req.reply_id, req.epoch, "cancelled" if stop.is_set() else "done"))


class SpeakingEngine(FakeEngine):
    def open_conversation(self, sink):
        conv = SpeakingConversation(sink, self.script)
        self.conversations.append(conv)
        return conv


def false_interruption_rate(guard: bool) -> float:
    """Share of replies paused or cut by nothing but their own echo."""
    hit = 0
    with RunningServer(ServerOptions(no_tls=True, echo=EchoOptions(guard=guard)), SpeakingEngine()) as srv:
        for _ in range(TRIALS):
            c = ListeningClient(srv.url).connect()
            try:
                assert c.control(type="start")["ok"]
                c.control(type="text", text="Talk to me.")
                assert c.wait_for(lambda c: c.named("reply_audio"), timeout=10)
                c.talk(np.zeros(16000 * 6, np.int16), echo_gain=ECHO_GAIN)  # the user stays silent
                hit += bool(c.named("pause") or c.named("interrupt"))
            finally:
                c.close()
    return hit / TRIALS


def test_echo_does_not_interrupt_with_the_guard_and_does_without():
    without = false_interruption_rate(guard=False)
    with_guard = false_interruption_rate(guard=True)
    print(f"false-interruption rate at {ECHO_GAIN} echo gain: guard off {without:.2f}, guard on {with_guard:.2f}")
    assert without >= 2 / 3  # the loop really makes the VAD hear the assistant ...
    assert with_guard == 0.0  # ... and the guard keeps it from interrupting


def test_real_barge_in_still_interrupts_over_the_echo():
    with RunningServer(ServerOptions(no_tls=True), SpeakingEngine()) as srv:
        c = ListeningClient(srv.url).connect()
        try:
            assert c.control(type="start")["ok"]
            c.control(type="text", text="Talk to me.")
            assert c.wait_for(lambda c: c.named("reply_audio"), timeout=10)
            c.talk(np.concatenate([load_wav("barge_in"), np.zeros(16000, np.int16)]), echo_gain=ECHO_GAIN)
            assert c.wait_for(lambda c: c.named("interrupt"), timeout=10)
            names = [e for e, _ in c.events]
            assert names.index("pause") < names.index("interrupt")
            assert c.named("interrupt")[0][0]["reason"] == "barge_in"
            # echo alone (the first 4 s) may be caught by the guard; the user's own speech is not
            assert all(a[0]["why"] == "echo" for a in c.named("judgement"))
        finally:
            c.close()
