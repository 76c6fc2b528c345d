"""Full duplex end to end: the real VITA engine on the tiny checkpoint (two vLLM engines, speech head),
real Silero VAD, real Socket.IO clients streaming the speech fixtures in real time.

One engine serves the whole module (started once); the monitor's verdict is forced where a test needs
one by restricting its sampling to a single state token (``judge``, the engine's judge plan).
"""

from __future__ import annotations

import gc
import os
import signal
import threading

import numpy as np
import pytest
import requests

from engine.duplex.engine import VitaEngine
from engine.duplex.options import DuplexOptions
from engine.llm.options import LlmOptions
from engine.llm.prompt import NOT_ADDRESSED, SPOKEN
from engine.speech.options import SpeechOptions
from server.options import ServerOptions
from tests.fakes.harness import RunningServer, load_wav, wait_until
from tests.fakes.listener import ListeningClient

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SILENCE = np.zeros(16000, np.int16)


@pytest.fixture(scope="module")
def vita(tiny_checkpoint):
    llm = LlmOptions(model_path=tiny_checkpoint, num_engines=2, dtype="float32", enforce_eager=True,
                     max_model_len=2048, kv_cache_mb=64, max_new_tokens=48)
    engine = VitaEngine(llm, DuplexOptions(speech=SpeechOptions(max_seconds_per_token=0.25)))
    yield engine
    engine.close()
    del engine
    gc.collect()


@pytest.fixture
def judge(vita, monkeypatch):
    """Force the monitor's verdict: ``judge(SPOKEN)`` or ``judge(NOT_ADDRESSED)``."""

    def force(state: str) -> None:
        monkeypatch.setattr(vita, "judge", vita.states.judge_plan([state]))

    return force


@pytest.fixture
def server(vita):
    with RunningServer(ServerOptions(no_tls=True, max_users=3), vita) as srv:
        yield srv


@pytest.fixture
def connect(server):
    """Open listening clients (started) on the server; all are closed after the test."""
    made: list[ListeningClient] = []

    def open_one() -> ListeningClient:
        client = ListeningClient(server.url).connect()
        made.append(client)
        assert client.control(type="start")["ok"]
        return client

    yield open_one
    for client in made:
        client.close()


def conversation_of(server, client):
    assert wait_until(lambda: len(server.state.sessions) >= 1)
    hello = client.named("hello")[0][0]
    return next(s for s in server.state.sessions.values() if s.id == hello["session"]).conversation


def audio_of(client, reply_id: str) -> list[dict]:
    return [a[0] for a in client.named("reply_audio") if a[0]["reply_id"] == reply_id]


def ended(client, reply_id: str) -> bool:
    return any(a[0]["reply_id"] == reply_id for a in client.named("reply_end"))


def test_spoken_question_gets_streamed_audio_back(server, connect, judge):
    judge(SPOKEN)
    c = connect()
    c.talk(np.concatenate([load_wav("question_en"), SILENCE]))
    assert c.wait_for(lambda c: c.named("reply_start"), timeout=30)
    rid = c.named("reply_start")[0][0]["reply_id"]
    assert c.wait_for(lambda c: ended(c, rid), timeout=60)
    end = c.named("reply_end")[0][0]
    assert end["reason"] == "done"
    chunks = audio_of(c, rid)
    assert chunks and [h["seq"] for h in chunks] == list(range(len(chunks)))
    assert "".join(a[0]["text"] for a in c.named("reply_text"))
    t = end["timings_ms"]
    # the per-turn timeline: monitor verdict, first clause, first audio, all measured
    assert {"engine_judge", "engine_first_clause", "engine_first_audio", "first_audio"} <= set(t)
    assert t["engine_judge"] <= t["engine_first_clause"] <= t["engine_first_audio"]
    # audio started before the LLM had finished? at least: the first chunk precedes the end
    names = [e for e, _ in c.events]
    assert names.index("reply_audio") < names.index("reply_end")
    c.report_all()  # the page reports playback: the timeline's last stage
    played = 'vita_turn_stage_seconds_count{stage="first_audio_played"} 1.0'
    assert wait_until(lambda: played in requests.get(server.url + "/metrics", timeout=5).text)
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    for stage in ("vad_decision", "judge", "first_clause", "first_audio_sent", "first_audio_played"):
        assert f'vita_turn_stage_seconds_count{{stage="{stage}"}} 1.0' in metrics, stage


def test_a_pause_inside_the_question_is_answered_ahead_withdrawn_and_leaves_no_trace(server, connect, judge):
    """The 300 ms pause inside this question is longer than ``answer_ahead_ms``: a turn answered ahead
    starts there and is withdrawn when the user goes on; the whole question is then answered once, played
    as soon as the turn ends, and only it becomes the conversation's."""
    judge(SPOKEN)
    c = connect()
    c.talk(np.concatenate([load_wav("short_pause_inside"), SILENCE]))
    assert c.wait_for(lambda c: c.named("reply_end"), timeout=60)
    rid = c.named("reply_end")[0][0]["reply_id"]
    assert len(c.named("reply_start")) == 1 and len(c.named("vad")) == 2  # one speech_start, one speech_end
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert "vita_turns_withdrawn_total 1.0" in metrics and "vita_turns_total 1.0" in metrics
    end = c.named("reply_end")[0][0]
    assert end["reason"] == "done" and end["timings_ms"]["answered_ahead"] > 200  # 500 - 150 ms of the tail
    assert all(h["reply_id"] == rid for h in audio_of(c, rid)) and len(c.named("reply_audio")) == len(audio_of(c, rid))
    conv = conversation_of(server, c)
    assert conv._last.reply_id == rid and len(conv._history.exchanges) == 0  # the withdrawn turn left nothing


def test_barge_in_cuts_the_answer_keeps_only_what_was_heard_and_answers(server, connect, judge):
    judge(SPOKEN)
    c = connect()
    conv = conversation_of(server, c)
    c.talk(np.concatenate([load_wav("question_en"), SILENCE]))
    # Speak over the answer as soon as it starts: random weights may say little (under a second)
    assert c.wait_for(lambda c: c.named("reply_start"), timeout=30)
    first = c.named("reply_start")[0][0]["reply_id"]
    # ... once it is audible: speech over a reply whose audio has not started yet pauses nothing (seen on
    # a loaded CI box, where the first clause took longer than the VAD's speech start)
    assert c.wait_for(lambda c: audio_of(c, first) or ended(c, first), timeout=30)
    c.talk(np.concatenate([load_wav("question_zh")[12800:40000], SILENCE]))  # from its speech onset
    assert c.wait_for(lambda c: len(c.named("reply_start")) == 2, timeout=30)
    second = c.named("reply_start")[1][0]["reply_id"]
    assert c.wait_for(lambda c: ended(c, second), timeout=60)
    names = [e for e, _ in c.events]
    # pause at speech onset, then the verdict's interrupt, then the new answer
    assert names.index("pause") < names.index("interrupt") < names.index("reply_start", names.index("interrupt"))
    cut = c.named("interrupt")[0][0]
    assert cut["reply_id"] == first and cut["reason"] == "barge_in"
    i = names.index("interrupt")
    stale = [a for e, a in c.events[i:] if e.startswith("reply_") and a[0]["epoch"] < cut["epoch"]]
    # A short reply may have been sent whole (reply_end) and still be playing: then its end came first.
    assert stale == [] and all(a[0]["reply_id"] != first for e, a in c.events[i:] if e == "reply_end")
    assert audio_of(c, second)
    # the history keeps the first answer only as far as it was played
    history = conv._history.exchanges
    assert len(history) == 1
    heard = history[0].reply.split()
    full = "".join(a[0]["text"] for a in c.named("reply_text") if a[0]["reply_id"] == first).split()
    assert c.played[first] > 0 and len(heard) < len(full)


def test_not_addressed_speech_gets_no_reply(server, connect, judge):
    judge(NOT_ADDRESSED)
    c = connect()
    c.talk(np.concatenate([load_wav("question_en"), SILENCE]))
    assert c.wait_for(lambda c: c.named("judgement"), timeout=30)
    verdict = c.named("judgement")[0][0]
    assert verdict["addressed"] is False and verdict["why"] == "state_token"
    assert c.named("reply_start") == [] and c.named("reply_audio") == []
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert "vita_not_addressed_total 1.0" in metrics


def test_not_addressed_speech_over_an_answer_resumes_it_without_loss(server, connect, judge):
    judge(NOT_ADDRESSED)
    c = connect()
    c.control(type="text", text="Tell me a story.")  # typed: always addressed
    assert c.wait_for(lambda c: c.named("reply_audio"), timeout=30)
    rid = c.named("reply_start")[0][0]["reply_id"]
    c.talk(np.concatenate([load_wav("question_en")[12000:40000], SILENCE]))
    assert c.wait_for(lambda c: ended(c, rid), timeout=60)
    assert c.named("pause") and c.named("resume") and c.named("interrupt") == []
    assert c.named("reply_end")[0][0]["reason"] == "done"
    seqs = [h["seq"] for h in audio_of(c, rid)]
    assert seqs == list(range(len(seqs)))  # nothing dropped while paused
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert "vita_false_interruptions_total 1.0" in metrics and "vita_interruptions_total 0.0" in metrics


def test_two_sessions_stay_isolated(server, connect, judge):
    judge(SPOKEN)
    a, b = connect(), connect()
    talk_b = threading.Thread(target=b.talk, args=(np.concatenate([load_wav("question_zh"), SILENCE]),))
    talk_b.start()
    a.talk(np.concatenate([load_wav("question_en"), SILENCE]))
    talk_b.join()
    for c in (a, b):
        assert c.wait_for(lambda c: c.named("reply_end"), timeout=60)
    ra, rb = a.named("reply_start")[0][0]["reply_id"], b.named("reply_start")[0][0]["reply_id"]
    assert ra != rb
    assert all(h["reply_id"] == ra for h in audio_of(a, ra)) and audio_of(a, rb) == []
    assert audio_of(b, ra) == [] and audio_of(b, rb)
    ca, cb = conversation_of(server, a), conversation_of(server, b)
    assert ca is not cb and ca._history is not cb._history
    assert ca._last.reply_id == ra and cb._last.reply_id == rb  # each answered only its own question


def test_metrics_expose_the_timeline_and_health(server):
    text = requests.get(server.url + "/metrics", timeout=5).text
    for name in ("vita_turn_stage_seconds_bucket", "vita_interruptions_total", "vita_false_interruptions_total",
                 "vita_not_addressed_total", "vita_active_sessions", "vita_engine_healthy 1.0"):
        assert name in text


def test_dying_engines_yield_errors_not_hangs(server, vita, judge):
    """Runs last: it kills this module's engine cores (processes this module started); they restart on
    their own (tests/test_supervision.py waits for that), and the module's teardown waits for the restarts."""
    judge(SPOKEN)
    c = ListeningClient(server.url)
    try:
        c.connect()
        for llm in vita.pool.engines:
            os.kill(llm._llm.engine_core.resources.engine_manager.processes[0].pid, signal.SIGKILL)
        # The OS takes a moment to tear a killed process down; until then it still counts as running.
        assert wait_until(lambda: requests.get(server.url + "/readyz", timeout=5).status_code == 503, timeout=5)
        c.sio.emit("control", {"type": "text", "text": "Are you there?"})  # no ack: the disconnect may beat it
        assert c.wait_for(lambda c: c.named("error"), timeout=60)
        err = c.named("error")[0][0]
        assert err["code"] == "engine" and err["fatal"] is True
        assert wait_until(lambda: not c.sio.connected)  # a fatal error ends the session
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 200  # alive: restarting
    finally:
        c.close()
