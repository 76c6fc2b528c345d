"""Graceful shutdown and the probes: /healthz (liveness) and /readyz (readiness), the drain on SIGTERM.

The first tests drive the product's drain (``server.drain.Drainer``) on a real server with the scripted fake
engine; the last one sends SIGTERM to a real ``launch.py`` process serving the tiny checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import socketio

from engine.interface import EngineStatus
from server import protocol as P
from server.drain import Drainer, DrainState
from server.options import ServerOptions
from tests.conftest import REPO_ROOT
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


# ---------------------------------------------------------------------- a real launch.py process

START_TIMEOUT_S = 420  # the tiny checkpoint is written, one engine and the speech head start (2 shared cores)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.vllm
@pytest.mark.slow
def test_sigterm_drains_a_real_server_and_exits_zero(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "launch.py", "--ip", "127.0.0.1", "--port", str(port), "--no-tls",
         "--tiny_dir", str(tmp_path / "tiny"), "--num_engines", "1", "--awakening", "always", "--drain_s", "60",
         "--max_new_tokens", "96"],  # a reply of a few seconds to drain (the default's 512 tokens take ~30 s)
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(ln.rstrip("\n") for ln in proc.stdout), daemon=True)
    reader.start()
    a = RecordingClient(url)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, "\n".join(lines[-80:])
            assert time.monotonic() < deadline, "not ready:\n" + "\n".join(lines[-80:])
            try:
                if requests.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        a.connect()
        assert a.control(type="text", text="Tell me about the weather.")["ok"]
        assert a.wait_for(lambda c: c.named("reply_audio"), timeout=60), a.events[-5:]
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)  # the server process only: its engine keeps serving the drain
        assert a.wait_for(lambda c: c.named(P.EV_SERVER_DRAINING), timeout=10)
        code = requests.get(url + "/readyz", timeout=5)
        assert code.status_code == 503 and code.json()["draining"]
        b = RecordingClient(url)
        with pytest.raises(socketio.exceptions.ConnectionError):
            b.connect()
        assert b.refused and "shutting down" in b.refused
        assert a.wait_for(lambda c: c.named("reply_end"), timeout=60), a.events[-5:]
        assert a.named("reply_end")[0][0]["reason"] == "done" and not a.named("error")
        assert wait_until(lambda: not a.sio.connected, timeout=10)
        assert proc.wait(60) == 0, "\n".join(lines[-80:])
        drain_s = time.monotonic() - sent
        print(f"\nSIGTERM to exit: {drain_s:.1f} s (exit {proc.returncode})")
        assert drain_s < 60
        reader.join(10)
        assert any("drained in" in ln for ln in lines), "\n".join(lines[-40:])
        assert wait_until(lambda: group_gone(proc.pid), timeout=15)  # its engine processes left with it
    finally:
        a.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        else:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind
            except ProcessLookupError:
                pass
