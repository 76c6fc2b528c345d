"""The waiting room: the pure queue on virtual time, then the server with real Socket.IO clients."""

from __future__ import annotations

import threading

import pytest
import socketio

from server.lan import join_info
from server.options import ServerOptions
from server.waiting_room import WaitingRoom
from tests.fakes.harness import RecordingClient, RunningServer, wait_until


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ---------------------------------------------------------------------- pure, virtual time


def test_fifo_order_bounded_capacity_and_leaving() -> None:
    room = WaitingRoom(capacity=3, timeout_s=60, slots=1, clock=FakeClock())
    assert [room.join(k).position for k in "abc"] == [1, 2, 3]
    assert room.join("d") is None  # full: the caller refuses it
    assert room.join("b").position == 2  # joining twice keeps the place
    assert room.leave("b") and not room.leave("b")
    assert [(p.key, p.position, p.waiting) for p in room.places()] == [("a", 1, 2), ("c", 2, 2)]
    assert room.admit() == "a" and room.admit() == "c" and room.admit() is None
    assert len(room) == 0 and room.next_deadline() is None


def test_no_queue_at_all() -> None:
    room = WaitingRoom(capacity=0, timeout_s=60, slots=2, clock=FakeClock())
    assert room.join("a") is None


def test_timeouts_on_virtual_time() -> None:
    clock = FakeClock()
    room = WaitingRoom(capacity=5, timeout_s=30, slots=1, clock=clock)
    room.join("a")
    clock.t += 10
    room.join("b")
    assert room.next_deadline() == 1030.0
    clock.t += 19.9
    assert room.expired() == []
    clock.t += 0.1
    assert room.expired() == ["a"]  # exactly timeout_s after joining
    assert room.place("b").position == 1 and room.place("b").waited_s == pytest.approx(20.0)
    assert room.next_deadline() == 1040.0
    clock.t += 10
    assert room.expired() == ["b"] and len(room) == 0


def test_estimate_is_unknown_until_a_session_ended_then_follows_session_lengths() -> None:
    clock = FakeClock()
    room = WaitingRoom(capacity=5, timeout_s=600, slots=2, clock=clock)
    room.session_started("s1")
    room.session_started("s2")
    room.join("a")
    assert room.place("a").estimated_wait_s is None  # nothing to base it on yet: honest
    clock.t += 100
    room.session_ended("s1")  # one session of 100 s; s2 is 100 s old
    room.session_started("s3")  # the free slot went to someone
    assert room.mean_session_s() == 100
    room.join("b")
    room.join("c")
    # s2 is at the mean already: 10 % of it is taken to remain (10 s); s3 just started: 100 s
    # a gets s2's slot at 10 s, b gets s3's at 100 s, c gets the slot a took, 10 + 100 s
    assert [p.estimated_wait_s for p in room.places()] == [10.0, 100.0, 110.0]
    clock.t += 5
    assert [p.estimated_wait_s for p in room.places()] == [10.0, 95.0, 110.0]


def test_estimate_counts_free_slots_as_free_now() -> None:
    clock = FakeClock()
    room = WaitingRoom(capacity=5, timeout_s=600, slots=2, clock=clock)
    room.session_started("s1")
    clock.t += 60
    room.session_ended("s1")
    room.session_started("s2")
    room.join("a")
    room.join("b")
    assert [p.estimated_wait_s for p in room.places()] == [0.0, 60.0]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        WaitingRoom(capacity=-1, timeout_s=1, slots=1)
    with pytest.raises(ValueError):
        ServerOptions(queue_timeout_s=0)


def test_join_info_offers_only_addresses_the_server_listens_on() -> None:
    assert join_info("127.0.0.1", "https", 8081)["urls"] == []
    assert "--ip 0.0.0.0" in join_info("127.0.0.1", "https", 8081)["hint"]
    assert join_info("0.0.0.0", "https", 8081, ["192.168.1.5"])["urls"] == ["https://192.168.1.5:8081/"]
    assert join_info("10.0.0.7", "http", None)["urls"] == ["http://10.0.0.7/"]
    assert join_info("::", "https", 8081, ["fd00::5"])["urls"] == ["https://[fd00::5]:8081/"]


# ---------------------------------------------------------------------- the server


def places(client: RecordingClient) -> list[int]:
    return [args[0]["position"] for args in client.named("waiting")]


def test_full_server_queues_then_admits_in_order() -> None:
    with RunningServer(ServerOptions(no_tls=True, max_users=1, queue_size=2)) as srv:
        first = RecordingClient(srv.url).connect()
        assert first.wait_for(lambda c: c.named("hello"))
        second = RecordingClient(srv.url).connect()
        third = RecordingClient(srv.url).connect()
        assert second.wait_for(lambda c: places(c)[-1:] == [1])
        assert third.wait_for(lambda c: places(c)[-1:] == [2])
        msg = third.named("waiting")[-1][0]
        assert msg["waiting"] == 2 and msg["timeout_s"] == 300 and msg["estimated_wait_s"] is None
        assert not second.named("hello")
        # waiting clients have no session: their controls are answered, not served
        assert second.control(type="ping") == {"ok": False, "code": "not_started", "message": "no session"}
        # the queue is full too: refused with a reason and a code
        fourth = RecordingClient(srv.url)
        with pytest.raises(socketio.exceptions.ConnectionError):
            fourth.connect()
        assert fourth.refused == "server full: 1 of 1 users are connected and 2 are waiting, try again later"
        assert srv.state.lobby is not None and len(srv.state.lobby.room) == 2
        # a session ends: the first in line is admitted (hello), the next moves up with an estimate
        first.close()
        assert second.wait_for(lambda c: c.named("hello"))
        assert second.control(type="ping")["ok"]
        assert third.wait_for(lambda c: places(c)[-1:] == [1])
        assert third.named("waiting")[-1][0]["estimated_wait_s"] is not None  # one session has ended
        # someone leaves the line: nobody is admitted, the ones behind move up
        second.close()
        assert third.wait_for(lambda c: c.named("hello"))
        assert len(srv.state.sessions) == 1
        third.close()
        assert wait_until(lambda: not srv.state.sessions)


def test_leaving_the_line_moves_the_others_up() -> None:
    with RunningServer(ServerOptions(no_tls=True, max_users=1, queue_size=3)) as srv:
        first = RecordingClient(srv.url).connect()
        a = RecordingClient(srv.url).connect()
        b = RecordingClient(srv.url).connect()
        assert b.wait_for(lambda c: places(c)[-1:] == [2])
        a.close()
        assert b.wait_for(lambda c: places(c)[-1:] == [1])
        assert not b.named("hello") and len(srv.state.sessions) == 1
        for c in (first, b):
            c.close()
        assert wait_until(lambda: not srv.state.sessions)
        assert wait_until(lambda: not [t for t in threading.enumerate() if t.name == "waiting-room"])


def test_waiting_too_long_is_told_and_disconnected() -> None:
    with RunningServer(ServerOptions(no_tls=True, max_users=1, queue_timeout_s=0.5)) as srv:
        first = RecordingClient(srv.url).connect()
        waiter = RecordingClient(srv.url).connect()
        assert waiter.wait_for(lambda c: any(a[0]["code"] == "queue_timeout" for a in c.named("error")), 10)
        err = next(a[0] for a in waiter.named("error") if a[0]["code"] == "queue_timeout")
        assert err["fatal"] and "within 0.5 s" in err["message"]
        assert wait_until(lambda: not waiter.sio.connected)
        assert srv.state.lobby is not None and len(srv.state.lobby.room) == 0
        assert first.control(type="ping")["ok"]
        first.close()
        waiter.close()


def test_a_draining_server_sends_its_waiters_away() -> None:
    with RunningServer(ServerOptions(no_tls=True, max_users=1, drain_s=5)) as srv:
        first = RecordingClient(srv.url).connect()
        waiter = RecordingClient(srv.url).connect()
        assert waiter.wait_for(lambda c: places(c) == [1])
        srv.state.drain.begin(5)
        assert waiter.wait_for(lambda c: c.named("server_draining"), 5)
        assert wait_until(lambda: not waiter.sio.connected)
        first.close()  # a slot frees while draining: nobody is admitted
        assert wait_until(lambda: not srv.state.sessions)
        waiter.close()


def test_join_route_needs_the_token_when_one_is_set() -> None:
    import urllib.error
    import urllib.request

    from server.options import SecurityOptions

    token = "join-token-0123456789abcdef"
    with RunningServer(ServerOptions(no_tls=True, security=SecurityOptions(access_token=token))) as srv:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(srv.url + "/join", timeout=5)
        assert err.value.code == 401
        req = urllib.request.Request(srv.url + "/join", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            import json

            body = json.loads(resp.read())
        assert body["lan"] is False and body["urls"] == [] and "--ip" in body["hint"]
