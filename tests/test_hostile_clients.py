"""Hostile clients at the edge: spoofed lifecycle events, malformed Engine.IO / Socket.IO packets, messages
over the transport limit, camera frames that declare huge images, and the idle timeout.

Real server (product code, Werkzeug + Flask-SocketIO), real python-socketio clients and a raw WebSocket client
that sends packets exactly as written (tests/fakes/raw_socket.py); the engine is the scripted fake.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import requests
import socketio

from server import protocol as P
from server.options import LimitOptions, ServerOptions, parse_options
from server.transport_limits import eio_framing_error
from tests.fakes.fake_engine import FakeEngine, Script
from tests.fakes.fuzz import DISCARDED, MALFORMED, Problems, declared, peak_rss_growth_mb, server_threads
from tests.fakes.harness import RecordingClient, RunningServer, wait_until
from tests.fakes.raw_socket import RawSocketIO, stream_oversize
from tests.test_protocol import make_jpeg

JPEG = make_jpeg(320, 240)


@pytest.fixture
def problems() -> Iterator[Problems]:
    """Fails the test on any traceback or thread exception, and on threads left behind."""
    before = server_threads()
    with Problems() as handler:
        yield handler
    assert handler.tracebacks == [] and handler.thread_errors == []
    assert wait_until(lambda: server_threads() <= before, timeout=15), sorted(t.name for t in server_threads() - before)


@pytest.fixture
def server(problems) -> Iterator[RunningServer]:
    srv = RunningServer(ServerOptions(no_tls=True, max_users=4), FakeEngine(Script(reply_seconds=0.5)))
    yield srv
    srv.stop()
    assert not srv.state.sessions and all(c.closed for c in srv.engine.conversations)


@pytest.fixture
def bystander(server) -> Iterator[RecordingClient]:
    """A user minding their own business on the same server: must never notice the hostile one."""
    c = RecordingClient(server.url).connect()
    yield c
    assert c.sio.connected and c.control(type="ping")["ok"], "the bystander lost its session"
    assert [e for e in c.named("error")] == []
    c.close()


def codes(client: RecordingClient) -> list[str]:
    return [args[0]["code"] for args in client.named("error")]


# ---------------------------------------------------------------- event names: one Session per connection


@pytest.mark.parametrize("name", ["connect", "disconnect", "connect_error", "message", "*", "mystery", ""])
def test_reserved_and_unknown_event_names_get_bad_type_and_nothing_else(server, bystander, name):
    c = RecordingClient(server.url).connect()
    try:
        for _ in range(30):
            c.sio.emit(name, {"x": 1})
        answer = c.sio.call(name, timeout=5)
        assert answer == {"ok": False, "code": "bad_type"}
        assert c.sio.connected and c.control(type="ping")["ok"]  # the session goes on
        assert c.wait_for(lambda c: c.named("error"))
        assert set(codes(c)) == {"bad_type"} and 1 <= len(codes(c)) <= 31  # rate-limited, never more
        assert len(c.named("hello")) == 1
        assert len(server.state.sessions) == 2 and len(server.engine.conversations) == 2
    finally:
        c.close()


def test_a_hundred_spoofed_connects_open_no_session_and_no_thread(server, bystander):
    c = RecordingClient(server.url).connect()
    before = len(threading.enumerate())
    for _ in range(100):
        c.sio.emit("connect", {})
    assert c.control(type="ping")["ok"]  # every emit before it has been handled
    assert len(c.named("hello")) == 1 and len(server.state.sessions) == 2 and len(server.engine.conversations) == 2
    assert len(threading.enumerate()) <= before + 1  # at most an Engine.IO ping thread
    body = requests.get(server.url + "/healthz", timeout=5).json()
    assert body["sessions"] == 2
    c.close()


def test_binary_event_with_a_reserved_name_is_refused_and_its_attachment_swallowed(server, bystander, problems):
    raw = RawSocketIO(server.url)
    assert raw.connect()
    raw.send('451-["connect",{"_placeholder":true,"num":0}]')
    raw.send(b"\x00\x01")  # must not be taken for the next packet
    assert raw.works(), raw.messages
    assert [e[0]["code"] for e in raw.events("error")] == ["bad_type"]
    assert len(raw.events("hello")) == 1 and len(server.engine.conversations) == 2
    raw.close()


def test_client_disconnect_packet_ends_session_and_transport(server, bystander):
    raw = RawSocketIO(server.url)
    assert raw.connect()
    assert wait_until(lambda: len(server.state.sessions) == 2)
    raw.send("41")
    assert raw.wait_closed(10)
    assert wait_until(lambda: len(server.state.sessions) == 1)
    raw.close()


# ---------------------------------------------------------------- malformed packets: closed, never stuck

@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_packet_closes_only_that_connection(server, bystander, problems, case):
    messages, level = MALFORMED[case]
    raw = RawSocketIO(server.url)
    assert raw.connect() and raw.wait_event("hello")
    for m in messages:
        raw.send(m)
    for _ in range(20):  # what follows a violation is dropped unseen: no log line, no answer
        raw.send('42["control",{"type":"ping"}]')
    assert raw.wait_closed(10), f"{case}: the connection is still open"
    if level == "eio":
        assert raw.close_code == 1002
    else:
        fatal = [e[0] for e in raw.events("error")]
        assert [(e["code"], e["fatal"]) for e in fatal] == [("bad_packet", True)], raw.messages
    assert wait_until(lambda: len(server.state.sessions) == 1)  # the bystander's only
    guard = server.state.guard.stats()
    assert sum(guard["violations"].values()) == 1
    violation_lines = [r for r in problems.records if "closing it" in r.getMessage() or "bad_packet" in r.getMessage()]
    assert len(violation_lines) == 1, [r.getMessage() for r in violation_lines]  # logged once, one line
    assert all(m[:20] not in violation_lines[0].getMessage() for m in messages if isinstance(m, str) and len(m) > 8)
    raw.close()


@pytest.mark.parametrize("case", sorted(DISCARDED))
def test_packets_the_server_may_drop_leave_the_connection_working(server, bystander, problems, case):
    raw = RawSocketIO(server.url)
    assert raw.connect()
    for m in DISCARDED[case]:
        raw.send(m)
    assert raw.works() and not raw.closed
    assert {e[0]["code"] for e in raw.events("error")} <= {"bad_type"}
    assert server.state.guard.stats()["violations"] == {} and len(server.engine.conversations) == 2
    raw.close()


def test_engineio_framing_check_matches_what_engineio_can_decode():
    for good in ("40", '42["audio"]', "6", "2probe", "bAAAA", '4{"a":1}'):
        assert eio_framing_error(good) is None, good
    for bad in ("", "x", " 4", "\u0663", "bQQ", "4" + "[" * 100_000):
        assert eio_framing_error(bad), bad


# ---------------------------------------------------------------- transport limit: refused before buffering


@pytest.mark.parametrize("opcode", [0x2, 0x1], ids=["binary", "text"])
def test_message_over_the_limit_is_refused_while_it_arrives(problems, opcode):
    limit = 2_000_000
    with RunningServer(ServerOptions(no_tls=True, limits=LimitOptions(max_message_bytes=limit))) as srv:
        ok = RecordingClient(srv.url).connect()
        raw = RawSocketIO(srv.url)
        assert raw.connect()
        sent: list[int] = []

        def attack() -> None:
            sent.append(stream_oversize(raw, 200_000_000, opcode=opcode))
            assert raw.wait_closed(10)

        growth = peak_rss_growth_mb(attack)
        if growth is None:
            pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")
        assert sent[0] < 200_000_000, "the server read the whole 200 MB message"
        assert growth < 4 * limit / 2**20 + 16, f"peak RSS rose {growth:.1f} MB for a {limit} B limit"
        assert srv.state.guard.stats()["violations"] == {"message_too_big": 1}
        assert wait_until(lambda: len(srv.state.sessions) == 1)
        assert ok.control(type="ping")["ok"]
        ok.close()


def test_long_polling_is_refused_before_any_body_is_read(problems):
    with RunningServer(ServerOptions(no_tls=True)) as srv:
        r = requests.get(srv.url + "/socket.io/?EIO=4&transport=polling", timeout=5)
        assert r.status_code == 400

        def post() -> None:
            body = (bytes(1 << 20) for _ in range(200))
            try:
                resp = requests.post(srv.url + "/socket.io/?EIO=4&transport=polling&sid=x", data=body,
                                     headers={"Content-Length": str(200 << 20)}, timeout=30)
                assert resp.status_code == 400
            except requests.ConnectionError:
                pass  # refused mid-upload: as good

        growth = peak_rss_growth_mb(post)
        assert growth is None or growth < 40
        assert not srv.state.sessions


# ---------------------------------------------------------------- camera frames: pixels bounded from the header


def test_frame_header_dimensions_are_bounded_before_decode():
    small = make_jpeg(64, 48)
    assert P.parse_frame(small, 10**6, 1920, 4_000_000)[1:] == (64, 48)
    assert P.parse_frame(declared(small, 1920, 1080), 10**6, 1920, 4_000_000)[1:] == (1920, 1080)
    for w, h, needle in ((9000, 9000, "a side"), (1921, 10, "a side"), (1920, 1920, "pixels exceeds")):
        with pytest.raises(P.ProtocolError, match=needle) as err:
            P.parse_frame(declared(small, w, h), 10**6, 1920, 3_000_000)
        assert err.value.code == "bad_frame"
    i = small.index(b"\xff\xc0")
    sof = small[i : i + 2 + int.from_bytes(small[i + 2 : i + 4], "big")]
    twice = small[:i] + sof + declared(small, 9000, 9000)[i:]  # a small frame header, then a huge one
    with pytest.raises(P.ProtocolError, match="two frame headers"):
        P.parse_frame(twice, 10**6, 1920, 4_000_000)
    with pytest.raises(P.ProtocolError, match="zero"):
        P.parse_frame(declared(small, 0, 48), 10**6)


def test_frame_limits_are_options_and_in_hello(server):
    o = parse_options(["--max_frame_side", "1280", "--max-frame-pixels", "1000000"])
    assert (o.limits.max_frame_side, o.limits.max_frame_pixels) == (1280, 1_000_000)
    assert (LimitOptions().max_frame_side, LimitOptions().max_frame_pixels) == (1920, 4_000_000)
    c = RecordingClient(server.url).connect()
    assert c.wait_for(lambda c: c.named("hello"))
    hello = c.named("hello")[0][0]
    assert (hello["max_frame_side"], hello["max_frame_pixels"]) == (1920, 4_000_000)
    c.close()


def test_huge_declared_frame_gets_bad_frame_and_is_not_kept(server, bystander):
    c = RecordingClient(server.url).connect()
    c.control(type="start")
    c.sio.emit("frame", declared(JPEG, 9000, 9000))
    assert c.wait_for(lambda c: "bad_frame" in codes(c), timeout=5)
    assert "9000x9000" in c.named("error")[0][0]["message"]
    session = next(s for s in server.state.sessions.values() if s.id == c.named("hello")[0][0]["session"])
    assert not session.frames
    c.sio.emit("frame", JPEG)
    assert c.control(type="ping")["ok"] and len(session.frames) == 1
    c.close()


# ---------------------------------------------------------------- idle timeout: transport and session, once


def test_idle_timeout_closes_transport_and_session_once(problems):
    options = ServerOptions(no_tls=True, timeout=0.5, max_users=4)
    with RunningServer(options) as srv:
        polite = RecordingClient(srv.url).connect()
        for _ in range(5):
            polite.sio.emit("connect", {})  # spoofed connects must not leave orphans behind to time out
        deaf = RawSocketIO(srv.url)  # never reads: the server must still end its connection
        assert deaf.connect()
        assert polite.wait_for(lambda c: "idle_timeout" in codes(c), timeout=10)
        assert polite.named("error")[-1][0]["fatal"]
        assert wait_until(lambda: not polite.sio.connected and not srv.state.sessions)
        assert wait_until(lambda: all(cv.closed for cv in srv.engine.conversations))
        assert len(srv.engine.conversations) == 2
        assert wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("session-writer-")])
        assert deaf.wait_closed(10)
        assert len(problems.lines("idle for")) == 2  # once per session; the writers are gone, so no more
        polite.close()
        deaf.close()


def test_refused_client_is_told_why_and_the_server_goes_on(problems):
    with RunningServer(ServerOptions(no_tls=True, max_users=1, queue_size=0)) as srv:  # no waiting room
        first = RecordingClient(srv.url).connect()
        extra = RecordingClient(srv.url)
        with pytest.raises(socketio.exceptions.ConnectionError):
            extra.connect()
        assert extra.refused and "server full" in extra.refused
        raw = RawSocketIO(srv.url)
        assert not raw.connect()  # refused ...
        raw.send('42["control",{"type":"ping"}]')  # ... so an event is a violation: closed
        assert raw.wait_closed(10)
        assert first.control(type="ping")["ok"]
        first.close()


def test_waiting_client_cannot_jump_the_line_with_spoofed_events(problems):
    with RunningServer(ServerOptions(no_tls=True, max_users=1, queue_size=2)) as srv:
        first = RecordingClient(srv.url).connect()
        second = RecordingClient(srv.url).connect()
        assert second.wait_for(lambda c: c.named("waiting"))
        for _ in range(10):
            second.sio.emit("connect", {})
        assert second.sio.call("connect", timeout=5) == {"ok": False, "code": "bad_type"}  # answered, nothing else
        assert len(srv.state.sessions) == 1 and len(srv.engine.conversations) == 1 and not second.named("hello")
        first.close()
        assert second.wait_for(lambda c: c.named("hello"))  # admitted in turn, once
        assert second.control(type="ping")["ok"]
        assert len(second.named("hello")) == 1 and len(srv.engine.conversations) == 2
        second.close()


# ---------------------------------------------------------------- connections that never join the namespace


def test_a_connection_without_connect_is_closed_at_the_deadline(problems):
    """An Engine.IO connection that never sends CONNECT, or stays after a refused one, would answer pings
    forever holding two server threads: it is closed after --connect_timeout_s. Connected clients stay."""
    options = ServerOptions(no_tls=True, max_users=1, queue_size=0, limits=LimitOptions(connect_timeout_s=0.5))
    with RunningServer(options, FakeEngine()) as srv:
        ok = RecordingClient(srv.url).connect()
        silent, refused = RawSocketIO(srv.url), RawSocketIO(srv.url)
        assert not refused.connect()  # full: CONNECT_ERROR, and the transport stays open on its side
        assert silent.wait_closed(10) and refused.wait_closed(10)
        assert srv.state.guard.stats()["violations"].get("connect_timeout") == 2
        assert ok.control(type="ping")["ok"]  # past its deadline too, and still served
        assert len(srv.state.sessions) == 1
        ok.close()
        silent.close()
        refused.close()
