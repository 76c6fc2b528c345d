"""Graceful shutdown and the probes: /healthz (liveness) and /readyz (readiness), the drain on SIGTERM.

These drive the product's drain (``server.drain.Drainer``) on a real server with the scripted fake engine.
SIGTERM to a real ``launch.py`` process serving the tiny checkpoint is tested with the replicas
(``tests/test_replicas.py``: the reply finishes, a newcomer is refused, it exits 0 and its engines with it).
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import requests
import socketio

from engine.interface import EngineStatus
from server import protocol as P
from server.drain import Drainer, DrainState
from server.options import ServerOptions
from tests.fakes.fake_engine import FakeEngine, Script
from tests.fakes.harness import RecordingClient, RunningServer, wait_until


class StatesEngine(FakeEngine):
    """The scripted fake with per-instance states the test sets (``states``: one per model instance)."""

    def __init__(self, states: list[str], script: Script | None = None) -> None:
        super().__init__(script)
        self.states = states

    def statuses(self) -> tuple[EngineStatus, ...]:
        return tuple(EngineStatus(f"llm{i}", s) for i, s in enumerate(self.states))  # type: ignore[arg-type]

    def health(self) -> dict[str, object]:
        st = self.statuses()
        return {"ok": any(s.state == "ready" for s in st), "live": any(s.state != "dead" for s in st),
                "engines": [dataclasses.asdict(s) for s in st]}


def probe(srv: RunningServer, path: str) -> tuple[int, dict]:
    r = requests.get(srv.url + path, timeout=5)
    return r.status_code, r.json()


def my_threads(srv: RunningServer) -> list[str]:
    """Threads of this server's sessions and of drains still running."""
    return [t.name for t in threading.enumerate() if t.name.startswith(("session-writer-", "fake-turn-", "drain"))]


def run_drain(srv: RunningServer, drain_s: float) -> tuple[threading.Thread, dict]:
    """The product's drain on a thread (as serve() runs it on SIGTERM); its report lands in the dict."""
    out: dict = {}

    def go() -> None:
        out["report"] = Drainer(srv.state, drain_s).run()

    th = threading.Thread(target=go, name="drain-test")
    th.start()
    return th, out


def test_drain_state_counts_down_on_its_clock() -> None:
    now = [100.0]
    d = DrainState(lambda: now[0])
    assert not d.active and d.seconds_left() is None
    assert d.begin(30) and d.active and d.seconds_left() == 30
    now[0] += 12
    assert not d.begin(99) and d.seconds_left() == 18  # a second begin keeps the first deadline
    now[0] += 40
    assert d.seconds_left() == 0


def test_readyz_says_full_and_which_engines_are_ready() -> None:
    engine = StatesEngine(["ready", "restarting"])
    with RunningServer(ServerOptions(no_tls=True, max_users=1), engine) as srv:
        code, body = probe(srv, "/readyz")
        assert code == 200 and body["ready"] and body["not_ready"] == []
        assert [e["state"] for e in body["engines"]] == ["ready", "restarting"]
        c = RecordingClient(srv.url).connect()
        try:
            code, body = probe(srv, "/readyz")
            assert code == 503 and body["not_ready"] == ["full"] and body["sessions"] == 1
            code, body = probe(srv, "/healthz")  # full is not unhealthy
            assert code == 200 and body["live"] and body["engines"][1]["state"] == "restarting"
        finally:
            c.close()
        assert wait_until(lambda: probe(srv, "/readyz")[0] == 200)
    assert my_threads(srv) == [] and not srv.state.sessions


def test_probes_follow_the_engine_states() -> None:
    engine = StatesEngine(["restarting", "starting"])
    with RunningServer(ServerOptions(no_tls=True), engine) as srv:
        code, body = probe(srv, "/readyz")
        assert code == 503 and body["not_ready"] == ["engine"]
        assert [e["state"] for e in body["engine"]["engines"]] == ["restarting", "starting"]
        code, body = probe(srv, "/healthz")
        assert code == 200 and body["ok"] and not body["ready"]  # it will recover by itself: alive
        engine.states = ["dead", "dead"]
        code, body = probe(srv, "/healthz")
        assert code == 503 and not body["ok"] and [e["state"] for e in body["engines"]] == ["dead", "dead"]
        engine.states = ["ready", "dead"]
        assert probe(srv, "/healthz")[0] == 200 and probe(srv, "/readyz")[0] == 200
        text = requests.get(srv.url + "/metrics", timeout=5).text
        assert 'vita_engine_state{engine="llm0",state="ready"} 1.0' in text
        assert 'vita_engine_state{engine="llm1",state="dead"} 1.0' in text
        assert 'vita_engine_state{engine="llm1",state="ready"} 0.0' in text
        assert "vita_draining 0.0" in text


def test_drain_refuses_newcomers_tells_clients_and_lets_the_reply_finish() -> None:
    with RunningServer(ServerOptions(no_tls=True, max_users=3), FakeEngine(Script(reply_seconds=2.0))) as srv:
        a = RecordingClient(srv.url).connect()
        assert a.control(type="text", text="Tell me something.")["ok"]
        assert a.wait_for(lambda c: c.named("reply_audio"))
        started = time.monotonic()
        th, out = run_drain(srv, drain_s=20)
        try:
            assert a.wait_for(lambda c: c.named(P.EV_SERVER_DRAINING), timeout=5)
            (msg,) = a.named(P.EV_SERVER_DRAINING)[0]
            assert 15 < msg["seconds_left"] <= 20 and msg["reason"] == "shutdown"
            code, body = probe(srv, "/readyz")
            assert code == 503 and "draining" in body["not_ready"] and body["draining"]
            assert probe(srv, "/healthz")[0] == 200  # draining is not dying
            assert "vita_draining 1.0" in requests.get(srv.url + "/metrics", timeout=5).text
            b = RecordingClient(srv.url)
            with pytest.raises(socketio.exceptions.ConnectionError):
                b.connect()
            assert b.refused and "shutting down" in b.refused
            # The reply plays to its end; then the server disconnects the client.
            assert a.wait_for(lambda c: c.named("reply_end"), timeout=10)
            assert a.named("reply_end")[0][0]["reason"] == "done"
            th.join(15)
            assert not th.is_alive()
            assert wait_until(lambda: not a.sio.connected)
        finally:
            a.close()
            th.join(15)
        report = out["report"]
        assert report.sessions == 1 and report.cut_short == 0
        assert 1.0 < report.seconds < 10 and time.monotonic() - started < 10
        assert not srv.state.sessions and all(cv.closed for cv in srv.engine.conversations)
    assert my_threads(srv) == []


def test_drain_cuts_replies_at_the_deadline_and_closes_idle_sessions_at_once() -> None:
    script = Script(reply_seconds=60.0, chunk_interval_s=0.02)
    with RunningServer(ServerOptions(no_tls=True, max_users=3), FakeEngine(script)) as srv:
        talking, idle = RecordingClient(srv.url).connect(), RecordingClient(srv.url).connect()
        assert talking.control(type="text", text="Talk for a minute.")["ok"]
        assert talking.wait_for(lambda c: c.named("reply_audio"))
        th, out = run_drain(srv, drain_s=1.0)
        try:
            th.join(10)
            assert not th.is_alive()
            assert wait_until(lambda: not talking.sio.connected and not idle.sio.connected)
            assert talking.named(P.EV_SERVER_DRAINING) and idle.named(P.EV_SERVER_DRAINING)
            assert not talking.named("reply_end")  # cut short, not finished
        finally:
            talking.close()
            idle.close()
        report = out["report"]
        assert report.sessions == 2 and report.cut_short == 1 and 0.9 < report.seconds < 5
        assert not srv.state.sessions and all(cv.closed for cv in srv.engine.conversations)
    assert my_threads(srv) == []
