"""Socket.IO end to end: a real server (threading + WebSocket) and real python-socketio clients.

The engine is the scripted fake from tests/fakes; everything else is the product code.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import requests
import socketio

from server.options import LimitOptions, ServerOptions
from tests.fakes.fake_engine import FakeEngine, Script
from tests.fakes.harness import RecordingClient, RunningServer, load_wav, manifest, wait_until
from tests.test_protocol import make_jpeg

JPEG = make_jpeg(320, 240)


def errors(client: RecordingClient) -> list[dict]:
    return [args[0] for args in client.named("error")]


def has_error(code: str):
    return lambda c: any(e["code"] == code for e in errors(c))


@pytest.fixture(scope="module")
def server():
    srv = RunningServer(ServerOptions(no_tls=True, max_users=4), FakeEngine(Script(reply_seconds=3.0)))
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    c = RecordingClient(server.url).connect()
    yield c
    c.close()


@pytest.fixture(scope="module")
def barge_in_run(server):
    """two_turns streamed in real time with camera frames: turn 1 gets a 3 s reply, turn 2 interrupts it."""
    c = RecordingClient(server.url).connect()
    assert c.control(type="start")["ok"]
    pcm = np.concatenate([load_wav("two_turns"), np.zeros(16000, np.int16)])
    c.stream(pcm, frame=JPEG)
    # reply 1 is interrupted (its end is stale and never sent); reply 2 plays to its end
    assert c.wait_for(lambda c: len(c.named("reply_start")) == 2 and c.named("reply_end"), timeout=15)
    first = c.named("reply_start")[0][0]["reply_id"]
    c.control(type="playback", reply_id=first, samples=12_000)
    conv = next(cv for cv in server.engine.conversations if cv.requests and cv.requests[0].reply_id == first)
    yield c, conv
    c.close()


def test_hello_describes_the_protocol(client):
    assert client.wait_for(lambda c: c.named("hello"))
    hello = client.named("hello")[0][0]
    assert hello["mic_sample_rate"] == 16000 and hello["reply_sample_rate"] == 24000
    assert hello["max_audio_packet_bytes"] == 3200 and hello["camera_fps"] == 2.0


def test_vad_events_match_the_speech(barge_in_run):
    c, _ = barge_in_run
    vad = [a[0] for a in c.named("vad")]
    assert [v["type"] for v in vad] == ["speech_start", "speech_end"] * 2
    truth = manifest()["two_turns"]["speech"]
    for i, span in enumerate(truth):
        start, end = vad[2 * i], vad[2 * i + 1]
        assert abs(start["start_ms"] / 1000 - span["start"]) <= 0.1
        assert abs(end["end_ms"] / 1000 - span["end"]) <= 0.15
        assert end["at_ms"] - end["end_ms"] >= 500


def test_reply_audio_arrives_in_order(barge_in_run):
    c, _ = barge_in_run
    starts = [a[0] for a in c.named("reply_start")]
    assert len(starts) == 2 and starts[0]["epoch"] < starts[1]["epoch"]
    for s in starts:
        headers = [a[0] for a in c.named("reply_audio") if a[0]["reply_id"] == s["reply_id"]]
        assert headers, "no audio for a reply"
        assert [h["seq"] for h in headers] == list(range(len(headers)))
        assert all(h["epoch"] == s["epoch"] for h in headers)
    last = [a for a in c.named("reply_audio") if a[0]["reply_id"] == starts[1]["reply_id"]]
    assert sum(len(a[1]) for a in last) == 3 * 24000 * 2  # the whole 3 s reply, PCM16
    assert all(isinstance(a[1], bytes) and len(a[1]) == 2 * a[0]["samples"] for a in last)
    texts = [a[0]["text"] for a in c.named("reply_text") if a[0]["reply_id"] == starts[1]["reply_id"]]
    assert "".join(texts) == "Hello, I hear you."


def test_barge_in_flushes_and_nothing_stale_follows(barge_in_run):
    c, conv = barge_in_run
    names = [ev for ev, _ in c.events]
    first = c.named("reply_start")[0][0]
    interrupts = [a[0] for a in c.named("interrupt")]
    assert len(interrupts) == 1
    flush = interrupts[0]
    assert flush["reason"] == "barge_in" and flush["reply_id"] == first["reply_id"]
    assert flush["epoch"] > first["epoch"]
    i_flush = names.index("interrupt")
    # the interruption came from the second turn's speech start, while reply 1 was still being sent
    assert names.index("reply_audio") < i_flush
    for ev, args in c.events[i_flush:]:
        if ev in ("reply_audio", "reply_text", "reply_end"):
            assert args[0]["epoch"] >= flush["epoch"], f"stale {ev} after the interrupt"
    assert first["epoch"] in conv.cancels
    ended = [a[0] for a in c.named("reply_end")]
    assert [e["reply_id"] for e in ended] == [a[0]["reply_id"] for a in c.named("reply_start")][1:]


def test_engine_gets_utterances_frames_and_playback(barge_in_run):
    _, conv = barge_in_run
    assert len(conv.requests) == 2
    for req, span in zip(conv.requests, manifest()["two_turns"]["speech"], strict=True):
        assert req.text is None and req.audio.dtype == np.float32
        # pre-roll (0.3 s) + speech + post-roll (0.1 s), give or take the detection tolerance
        assert abs(req.audio.size / 16000 - (span["end"] - span["start"] + 0.4)) < 0.3
        assert req.frames and all(f.jpeg == JPEG for f in req.frames)
        # the span is the speech; frames count from 1 s before its audio, which starts 0.3 s (pre-roll) earlier
        assert req.start_sample < req.end_sample and abs(req.start_sample / 16000 - span["start"]) < 0.2
        assert all(req.start_sample - 16000 - 4800 <= f.at_sample <= req.end_sample + 16000 for f in req.frames)
    assert wait_until(lambda: conv.playback)
    assert conv.playback == [(conv.requests[0].reply_id, 12_000)]


def test_turn_timings_are_reported(barge_in_run):
    c, _ = barge_in_run
    timings = c.named("reply_end")[-1][0]["timings_ms"]
    for key in ("first_text", "first_audio", "reply_total", "engine_fake_first_token"):
        assert key in timings
    assert 0 <= timings["first_text"] <= timings["reply_total"]


def test_typed_text_answers_and_interrupts(client, server):
    client.control(type="start")
    client.control(type="text", text="What is this?")
    assert client.wait_for(lambda c: c.named("reply_audio"))
    client.control(type="text", text="Never mind, something else.")
    assert client.wait_for(lambda c: c.named("interrupt") and len(c.named("reply_end")) >= 1)
    assert client.named("interrupt")[0][0]["reason"] == "text"
    starts = [a[0] for a in client.named("reply_start")]
    assert [s["source"] for s in starts] == ["text", "text"]
    conv = server.engine.conversations[-1]
    assert [r.text for r in conv.requests] == ["What is this?", "Never mind, something else."]


def test_reset_and_stop_silence_the_reply(client, server):
    client.control(type="start")
    client.control(type="text", text="Tell me a story.")
    assert client.wait_for(lambda c: c.named("reply_audio"))
    ack = client.control(type="reset")
    assert ack["ok"] and server.engine.conversations[-1].resets == 1
    assert client.wait_for(lambda c: c.named("interrupt"))
    assert client.named("interrupt")[0][0]["reason"] == "reset"
    client.control(type="text", text="Again.")
    assert client.wait_for(lambda c: len(c.named("reply_start")) == 2 and len(c.named("reply_audio")) > 1)
    assert not client.control(type="stop")["listening"]
    assert client.wait_for(lambda c: len(c.named("interrupt")) == 2)
    assert client.named("interrupt")[1][0]["reason"] == "stop"


def test_two_sessions_stay_isolated(server):
    a, b = RecordingClient(server.url).connect(), RecordingClient(server.url).connect()
    try:
        a.control(type="start")
        b.control(type="start")
        tail = np.zeros(12800, np.int16)
        ta = threading.Thread(target=a.stream, args=(np.concatenate([load_wav("question_en"), tail]),))
        tb = threading.Thread(target=b.stream, args=(np.concatenate([load_wav("noise_only"), tail]),))
        ta.start(), tb.start()
        ta.join(), tb.join()
        assert a.wait_for(lambda c: c.named("reply_end"))
        b.control(type="reset")
        assert [v[0]["type"] for v in a.named("vad")] == ["speech_start", "speech_end"]
        assert not b.named("vad") and not b.named("reply_start") and not b.named("reply_audio")
        sid_a = a.named("hello")[0][0]["session"]
        conv_a = next(cv for cv in server.engine.conversations if cv.requests and cv.requests[0].reply_id.startswith(sid_a))
        assert conv_a.resets == 0 and len(conv_a.requests) == 1
        assert all(args[0]["reply_id"].startswith(sid_a) for args in a.named("reply_audio"))
    finally:
        a.close(), b.close()


# ---------------------------------------------------------------- bad input: an error each, the session goes on

def _audio(ms: int) -> bytes:
    return np.zeros(16 * ms, np.int16).tobytes()


BAD_INPUTS = {
    "audio-before-start": (False, lambda c: c.sio.emit("audio", _audio(20)), "not_started"),
    "frame-before-start": (False, lambda c: c.sio.emit("frame", JPEG), "not_started"),
    "audio-as-json": (True, lambda c: c.sio.emit("audio", [0, 1, 2, 3]), "bad_type"),
    "audio-as-text": (True, lambda c: c.sio.emit("audio", "AAAA"), "bad_type"),
    "audio-odd-bytes": (True, lambda c: c.sio.emit("audio", b"\x00" * 641), "bad_audio"),
    "audio-empty": (True, lambda c: c.sio.emit("audio", b""), "bad_audio"),
    "audio-oversize": (True, lambda c: c.sio.emit("audio", _audio(500)), "bad_audio"),
    "frame-not-jpeg": (True, lambda c: c.sio.emit("frame", b"\x89PNG\r\n\x1a\n" + bytes(200)), "bad_frame"),
    "frame-oversize": (True, lambda c: c.sio.emit("frame", JPEG + bytes(2_000_000)), "bad_frame"),
    "frame-as-dataurl": (True, lambda c: c.sio.emit("frame", "data:image/jpeg;base64,/9j/"), "bad_type"),
    "control-not-object": (True, lambda c: c.sio.emit("control", "start"), "bad_type"),
    "control-unknown": (True, lambda c: c.sio.emit("control", {"type": "launch"}), "bad_control"),
    "text-too-long": (True, lambda c: c.sio.emit("control", {"type": "text", "text": "x" * 5000}), "bad_control"),
    "playback-unknown-reply": (
        True, lambda c: c.sio.emit("control", {"type": "playback", "reply_id": "nope", "samples": 1}), "bad_control"
    ),
    "unknown-event": (True, lambda c: c.sio.emit("mystery", {"a": 1}), "bad_type"),
    "audio-flood": (True, lambda c: [c.sio.emit("audio", _audio(100)) for _ in range(40)], "rate_limited"),
    "frame-flood": (True, lambda c: [c.sio.emit("frame", JPEG) for _ in range(20)], "rate_limited"),
    "control-flood": (True, lambda c: [c.sio.emit("control", {"type": "ping"}) for _ in range(60)], "rate_limited"),
    "audio-after-stop": (True, lambda c: (c.control(type="stop"), c.sio.emit("audio", _audio(20))), "not_started"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_an_error_and_the_session_survives(client, case):
    start, send, code = BAD_INPUTS[case]
    if start:
        client.control(type="start")
    send(client)
    assert client.wait_for(has_error(code), timeout=5), (case, errors(client))
    err = next(e for e in errors(client) if e["code"] == code)
    assert err["message"] and not err["fatal"]
    assert client.sio.connected
    # the session goes on: once any rate limit has refilled, it acts on good input again
    assert wait_until(lambda: client.control(type="start" if case != "audio-after-stop" else "ping")["ok"], interval=0.25)
    if case != "audio-after-stop":
        before = len(errors(client))
        client.sio.emit("audio", _audio(20))
        client.sio.emit("frame", JPEG)
        assert client.control(type="ping")["ok"]
        assert errors(client)[before:] == []


def test_errors_to_one_client_are_rate_limited(client):
    for _ in range(50):
        client.sio.emit("mystery", 1)
    client.sio.call("control", {"type": "ping"}, timeout=5)
    assert 5 <= len(errors(client)) <= 20


def test_message_over_transport_limit_closes_only_that_connection():
    limits = LimitOptions(max_message_bytes=200_000)
    with RunningServer(ServerOptions(no_tls=True, limits=limits)) as srv:
        big, ok = RecordingClient(srv.url).connect(), RecordingClient(srv.url).connect()
        big.control(type="start")
        big.sio.emit("frame", JPEG + bytes(300_000))
        assert wait_until(lambda: not big.sio.connected)
        assert ok.control(type="ping")["ok"] and ok.sio.connected
        again = RecordingClient(srv.url).connect()
        assert again.control(type="ping")["ok"]
        for c in (big, ok, again):
            c.close()


def test_max_users_refuses_the_extra_client_with_a_reason():
    # queue_size=0: no waiting room (tests/test_waiting_room.py covers the queue)
    with RunningServer(ServerOptions(no_tls=True, max_users=1, queue_size=0)) as srv:
        first = RecordingClient(srv.url).connect()
        extra = RecordingClient(srv.url)
        with pytest.raises(socketio.exceptions.ConnectionError):
            extra.connect()
        assert extra.refused and "server full" in extra.refused
        assert first.control(type="ping")["ok"]
        first.close()
        assert wait_until(lambda: not srv.state.sessions)
        later = RecordingClient(srv.url).connect()
        assert later.control(type="ping")["ok"]
        later.close()


def test_idle_session_is_closed_with_a_reason():
    with RunningServer(ServerOptions(no_tls=True, timeout=0.5)) as srv:
        c = RecordingClient(srv.url).connect()
        assert c.wait_for(has_error("idle_timeout"), timeout=10)
        assert errors(c)[-1]["fatal"]
        assert wait_until(lambda: not c.sio.connected and not srv.state.sessions)


def test_healthz_reports_engine_and_sessions(server, client):
    body = requests.get(f"{server.url}/healthz", timeout=5).json()
    assert body["ok"] and body["sessions"] >= 1 and body["max_users"] == 4
    server.engine.healthy = False
    try:
        r = requests.get(f"{server.url}/healthz", timeout=5)
        assert r.status_code == 503 and not r.json()["ok"]
    finally:
        server.engine.healthy = True
    page = requests.get(f"{server.url}/", timeout=5)
    assert page.status_code == 200 and "/static/vendor/socket.io.min.js" in page.text


def test_sessions_leave_no_threads_behind():
    with RunningServer(ServerOptions(no_tls=True, max_users=3), FakeEngine(Script(reply_seconds=30, chunk_interval_s=0.01))) as srv:
        clients = [RecordingClient(srv.url).connect() for _ in range(3)]
        for c in clients:
            c.control(type="text", text="Talk for a while.")
        assert all(c.wait_for(lambda c: c.named("reply_audio")) for c in clients)
        for c in clients:
            c.close()
        assert wait_until(lambda: not srv.state.sessions)
        assert all(cv.closed for cv in srv.engine.conversations)
        ids = [c.named("hello")[0][0]["session"] for c in clients]
    mine = tuple(f"{prefix}{i}" for i in ids for prefix in ("session-emit-", "fake-turn-"))
    leftover = [t.name for t in threading.enumerate() if t.name.startswith(mine)]
    assert leftover == []


def test_engine_that_cannot_open_a_conversation_refuses_with_a_reason():
    class BrokenEngine(FakeEngine):
        def open_conversation(self, sink):
            raise RuntimeError("model not loaded")

    with RunningServer(ServerOptions(no_tls=True), BrokenEngine()) as srv:
        c = RecordingClient(srv.url)
        with pytest.raises(socketio.exceptions.ConnectionError):
            c.connect()
        assert c.refused and "model not loaded" in c.refused
        assert not srv.state.sessions
