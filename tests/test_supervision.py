"""Engine supervision: a killed vLLM engine fails only the reply in flight, is restarted with backoff, and
the conversations carry on with their history; with every engine dead the client is told and disconnected.

* :class:`RestartPlan` on virtual time, and :class:`EngineSupervisor` driving stand-in engines (no vLLM);
* a fatal engine error closes the session (scripted fake engine, real server and Socket.IO client);
* the real VITA engine on the tiny checkpoint (two vLLM engines, speech head) behind a real server: engine
  cores are killed with SIGKILL (processes this module started) and must come back without a server restart.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time
from typing import Any

import pytest
import requests
import socketio

from engine.duplex.engine import VitaEngine
from engine.duplex.options import DuplexOptions
from engine.interface import Conversation, EngineError, EventSink, ReplyEnd, TurnRequest
from engine.llm.options import LlmOptions
from engine.llm.supervisor import EngineSupervisor, RestartPlan, SupervisionOptions
from engine.speech.options import SpeechOptions
from server.options import ServerOptions
from tests.fakes.fake_engine import FakeEngine
from tests.fakes.harness import RecordingClient, RunningServer, wait_until

# ---------------------------------------------------------------------- the plan, on virtual time


def test_backoff_doubles_is_capped_and_gives_up() -> None:
    p = RestartPlan(SupervisionOptions(backoff_s=1, backoff_max_s=4, max_attempts=4), ready_since=0.0)
    p.died(100.0, "killed")
    assert (p.state, p.next_at, p.last_error) == ("restarting", 101.0, "killed")
    assert not p.due(100.9) and p.due(101.0)
    waits = []
    t = 101.0
    for _ in range(3):
        p.begin(t)
        assert p.state == "starting" and not p.due(t + 100)
        t += 10  # the attempt takes 10 s and fails
        p.failed(t, "no memory")
        waits.append(p.next_at - t)
        t = p.next_at
    assert waits == [2.0, 4.0, 4.0] and p.attempts == 3  # doubled, then capped
    p.begin(t)
    p.failed(t + 10, "no memory")
    assert p.state == "dead" and p.next_at is None and p.attempts == 4 and p.restarts == 0


def test_a_stable_engine_starts_afresh_but_a_crash_loop_keeps_backing_off() -> None:
    p = RestartPlan(SupervisionOptions(backoff_s=1, backoff_max_s=30, stable_s=60), ready_since=0.0)
    p.died(0.0, "a")
    p.begin(1.0)
    p.succeeded(20.0)
    assert p.state == "ready" and p.restarts == 1
    p.died(30.0, "b")  # 10 s after its restart: the same crash loop
    assert p.next_at == 32.0
    p.begin(32.0)
    p.succeeded(40.0)
    p.died(200.0, "c")  # it served 160 s: a new incident
    assert p.next_at == 201.0 and p.attempts == 2 and p.restarts == 2


def test_no_restart_when_disabled_or_shutting_down() -> None:
    off = RestartPlan(SupervisionOptions(enabled=False))
    off.died(5.0, "killed")
    assert off.state == "dead" and off.last_error == "killed"
    waiting = RestartPlan(SupervisionOptions())
    waiting.died(0.0, "killed")
    waiting.give_up("shutting down")
    assert waiting.state == "dead" and not waiting.due(1e9)
    starting = RestartPlan(SupervisionOptions())
    starting.died(0.0, "killed")
    starting.begin(1.0)
    starting.give_up("shutting down")
    assert starting.state == "starting"  # an attempt in progress finishes; it is not abandoned half-built
    with pytest.raises(ValueError):
        SupervisionOptions(backoff_s=5, backoff_max_s=1)


# ---------------------------------------------------------------------- the supervisor, on stand-in engines


class StandInLlm:
    """What the supervisor holds of an AsyncLLM: something to shut down."""

    def __init__(self) -> None:
        self.shut = False

    def shutdown(self) -> None:
        self.shut = True


class StandInEngine:
    """The part of ``LlmEngine`` the supervisor uses; ``build_llm`` waits for the test's go."""

    def __init__(self, name: str) -> None:
        self.name, self.load, self.start_seconds, self.closed = name, 0, 1.0, False
        self.llm: StandInLlm | None = StandInLlm()
        self.dead: str | None = None
        self.fail = False
        self.go = threading.Event()
        self.released: list[StandInLlm] = []
        self.built: list[StandInLlm] = []

    def dead_reason(self) -> str | None:
        return self.dead

    def release(self) -> None:
        assert self.llm is not None
        self.llm.shutdown()
        self.released.append(self.llm)
        self.llm = None

    def build_llm(self) -> StandInLlm:
        assert self.go.wait(10)
        self.go.clear()
        if self.fail:
            raise RuntimeError("out of memory")
        self.built.append(StandInLlm())
        return self.built[-1]

    def attach(self, llm: StandInLlm, seconds: float) -> None:
        self.llm, self.dead = llm, None


async def settle(predicate, within_s: float = 5.0) -> bool:
    """Let the loop run (the supervisor's thread reports back through it) until ``predicate`` holds."""
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_supervisor_releases_the_dead_and_restarts_with_backoff() -> None:
    now = [0.0]
    a, b = StandInEngine("llm0"), StandInEngine("llm1")
    sup = EngineSupervisor([a, b], SupervisionOptions(backoff_s=1, backoff_max_s=8, max_attempts=3),  # type: ignore[list-item]
                           clock=lambda: now[0])
    a.dead = "the vLLM engine core stopped"
    sup.check()
    s0, s1 = sup.statuses()
    assert a.released and a.llm is None and (s0.state, s0.next_restart_s, s0.last_error) == (
        "restarting", 1.0, "the vLLM engine core stopped")
    assert s1.state == "ready" and sup.ready() == [1]
    now[0] = 0.9
    sup.check()
    assert sup.statuses()[0].state == "restarting"  # still waiting out the backoff
    a.fail = True
    a.go.set()
    now[0] = 1.0
    sup.check()
    assert sup.statuses()[0].state == "starting"
    assert await settle(lambda: sup.statuses()[0].state == "restarting")
    s0 = sup.statuses()[0]
    assert s0.next_restart_s == 2.0 and s0.restart_attempts == 1 and "out of memory" in (s0.last_error or "")
    a.fail = False
    a.go.set()
    now[0] = 3.0
    sup.check()
    assert await settle(lambda: sup.statuses()[0].state == "ready")
    s0 = sup.statuses()[0]
    assert (s0.restarts, s0.restart_attempts) == (1, 2) and a.llm is a.built[-1] and sup.ready() == [0, 1]
    assert sup.join(5) and not [t for t in threading.enumerate() if t.name.startswith("restart-llm")]


async def test_a_restart_finishing_after_stop_is_shut_down() -> None:
    now = [0.0]
    a = StandInEngine("llm0")
    sup = EngineSupervisor([a], SupervisionOptions(backoff_s=1), clock=lambda: now[0])  # type: ignore[list-item]
    a.dead = "killed"
    sup.check()
    now[0] = 1.0
    sup.check()
    assert sup.statuses()[0].state == "starting"
    sup.stop()
    a.go.set()
    assert sup.join(5)
    assert await settle(lambda: sup.statuses()[0].state == "dead")
    assert a.built[-1].shut and a.llm is None  # built after the stop: shut down, never attached


# ---------------------------------------------------------------------- fatal error: told and disconnected


class DownConversation(Conversation):
    """Every turn fails as when no engine is left."""

    def __init__(self, sink: EventSink) -> None:
        self.sink, self.closed = sink, False

    def start_turn(self, request: TurnRequest) -> None:
        self.sink(EngineError(request.reply_id, request.epoch, "no LLM engine can serve right now", fatal=True))
        self.sink(ReplyEnd(request.reply_id, request.epoch, "error"))

    def cancel(self, epoch: int) -> None:
        pass

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class DownEngine(FakeEngine):
    def open_conversation(self, sink: EventSink) -> DownConversation:  # type: ignore[override]
        conv = DownConversation(sink)
        self.conversations.append(conv)  # type: ignore[arg-type]
        return conv


def test_a_fatal_engine_error_tells_the_client_and_disconnects_it() -> None:
    with RunningServer(ServerOptions(no_tls=True), DownEngine()) as srv:
        c = RecordingClient(srv.url).connect()
        try:
            c.sio.emit("control", {"type": "text", "text": "Hello?"})  # no ack: the disconnect may beat it
            assert c.wait_for(lambda c: c.named("error"))
            (err,) = c.named("error")[0]
            assert err["code"] == "engine" and err["fatal"] is True and "no LLM engine" in err["message"]
            assert wait_until(lambda: not c.sio.connected and not srv.state.sessions)
            assert len(c.named("error")) == 1  # told once
        finally:
            c.close()
        assert all(cv.closed for cv in srv.engine.conversations)
    assert not [t for t in threading.enumerate() if t.name.startswith("session-writer-")]


# ---------------------------------------------------------------------- the real engines

START_S = 420  # a restart on 2 shared cores, at worst


@pytest.fixture(scope="module")
def vita(tiny_checkpoint):
    llm = LlmOptions(model_path=tiny_checkpoint, num_engines=2, dtype="float32", enforce_eager=True,
                     max_model_len=2048, kv_cache_mb=64, max_new_tokens=32)
    engine = VitaEngine(llm, DuplexOptions(speech=SpeechOptions(max_seconds_per_token=0.25)),
                        SupervisionOptions(backoff_s=1.0))
    yield engine
    engine.close()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("restart-llm")]
    del engine
    gc.collect()


@pytest.fixture(scope="module")
def server(vita):
    with RunningServer(ServerOptions(no_tls=True, max_users=4), vita) as srv:
        yield srv
    assert not srv.state.sessions


def core_pid(vita: VitaEngine, i: int) -> int:
    return vita.pool.engines[i]._llm.engine_core.resources.engine_manager.processes[0].pid


def states(srv: RunningServer) -> list[str]:
    return [e["state"] for e in requests.get(srv.url + "/readyz", timeout=5).json()["engines"]]


def reply_ids(c: RecordingClient) -> list[str]:
    return [m["reply_id"] for (m,) in c.named("reply_start")]


def ended(c: RecordingClient, rid: str) -> str | None:
    return next((m["reason"] for (m,) in c.named("reply_end") if m["reply_id"] == rid), None)


def ask(c: RecordingClient, text: str, timeout: float = 120) -> str:
    """A typed question answered to its end; the reply's id."""
    n = len(reply_ids(c))
    assert c.control(type="text", text=text)["ok"]
    assert c.wait_for(lambda c: len(reply_ids(c)) > n, timeout=30)
    rid = reply_ids(c)[n]
    assert c.wait_for(lambda c: ended(c, rid) is not None, timeout=timeout), c.events[-5:]
    return rid


def stuck_request_on(vita: VitaEngine, i: int, c: RecordingClient, text: str) -> None:
    """Freeze engine ``i``'s core and ask: the reply's request waits on that engine (no output)."""
    os.kill(core_pid(vita, i), signal.SIGSTOP)
    assert c.control(type="text", text=text)["ok"]
    assert wait_until(lambda: vita.pool.engines[i].load == 1, timeout=30)


@pytest.fixture
def spy(vita, monkeypatch):
    """Record (engine index, request id, history turns in its prompt) for every LLM request."""
    calls: list[tuple[int, str, int]] = []
    for i, llm in enumerate(vita.pool.engines):
        def stream(prompt, rid, _i=i, _orig=llm.stream, **kw: Any):
            calls.append((_i, rid, prompt.history_used))
            return _orig(prompt, rid, **kw)

        monkeypatch.setattr(llm, "stream", stream)
    return calls


@pytest.mark.vllm
@pytest.mark.slow
def test_a_killed_engine_fails_only_its_reply_and_comes_back(vita, server, spy):
    a = RecordingClient(server.url).connect()
    b = RecordingClient(server.url)
    try:
        first = ask(a, "Hello there.")
        assert ended(a, first) == "done" and spy[-1][0] == 0  # a new conversation generates on engine 0
        stuck_request_on(vita, 0, a, "Are you still there?")
        killed = time.monotonic()
        os.kill(core_pid(vita, 0), signal.SIGKILL)  # a process this module started
        assert a.wait_for(lambda c: c.named("error"), timeout=10)
        to_error = time.monotonic() - killed
        (err,) = a.named("error")[0]
        assert err["code"] == "engine" and err["fatal"] is False and to_error < 2.0, (err, to_error)
        print(f"\nkill -> non-fatal error: {to_error:.2f} s")
        # The other engine serves meanwhile: the server stays ready and the session goes on.
        r = requests.get(server.url + "/readyz", timeout=5)
        assert r.status_code == 200 and r.json()["engines"][0]["state"] in ("restarting", "starting")
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
        third = ask(a, "Then answer this one.")
        assert ended(a, third) == "done" and spy[-1][0] == 1 and len(a.named("error")) == 1
        # Engine 0 is back without a server restart: within 60 s plus its own start.
        assert wait_until(lambda: states(server) == ["ready", "ready"], timeout=START_S, interval=0.2)
        back = time.monotonic() - killed
        health = requests.get(server.url + "/healthz", timeout=5).json()["engine"]["engines"][0]
        print(f"kill -> engine ready again: {back:.1f} s (its start: {health['start_seconds']} s)")
        assert back < 60 + health["start_seconds"] and health["restarts"] == 1
        metrics = requests.get(server.url + "/metrics", timeout=5).text
        for line in ('vita_engine_restart_attempts_total{engine="llm0"} 1.0',
                     'vita_engine_restarts_total{engine="llm0"} 1.0',
                     'vita_engine_restarts_total{engine="llm1"} 0.0',
                     'vita_engine_state{engine="llm0",state="ready"} 1.0'):
            assert line in metrics, line
        # A new conversation generates on engine 0 again: the restarted one serves.
        b.connect()
        rid = ask(b, "Hi, who are you?")
        assert ended(b, rid) == "done" and (0, rid) in [(i, r) for i, r, _ in spy]
        # The first conversation kept its history across the restart (turns 1-3 are in its next prompt).
        fourth = ask(a, "What did I ask first?")
        (history,) = [h for _, r, h in spy if r == fourth]
        assert ended(a, fourth) == "done" and history >= 2
    finally:
        a.close()
        b.close()
    assert wait_until(lambda: not server.state.sessions)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("restart-llm")]


@pytest.mark.vllm
@pytest.mark.slow
def test_with_every_engine_killed_the_client_is_told_and_the_server_recovers(vita, server):
    """Runs last: kills both engine cores of this module."""
    c = RecordingClient(server.url).connect()
    later = RecordingClient(server.url)
    try:
        stuck_request_on(vita, 0, c, "Anyone?")
        # Engine 1 first, until it counts as dead: the OS takes a moment to tear a killed process down, and
        # a reply failing in between would rightly see engine 1 as still serving (a non-fatal error).
        os.kill(core_pid(vita, 1), signal.SIGKILL)
        assert wait_until(lambda: states(server)[1] != "ready")
        killed = time.monotonic()
        os.kill(core_pid(vita, 0), signal.SIGKILL)
        assert c.wait_for(lambda c: c.named("error"), timeout=10)
        (err,) = c.named("error")[0]
        assert err["code"] == "engine" and err["fatal"] is True and time.monotonic() - killed < 2.0, err
        assert wait_until(lambda: not c.sio.connected and not server.state.sessions)
        r = requests.get(server.url + "/readyz", timeout=5)
        assert r.status_code == 503 and r.json()["not_ready"] == ["engine"]
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 200  # it restarts by itself
        with pytest.raises(socketio.exceptions.ConnectionError):  # a restart takes seconds: none is back yet
            later.connect()
        assert later.refused and "restarting" in later.refused
        assert wait_until(lambda: requests.get(server.url + "/readyz", timeout=5).status_code == 200,
                          timeout=START_S, interval=0.2)
        print(f"\nboth killed -> ready again: {time.monotonic() - killed:.1f} s")
        later = RecordingClient(server.url).connect()
        assert ended(later, ask(later, "Back again?")) == "done"
        assert wait_until(lambda: states(server) == ["ready", "ready"], timeout=START_S, interval=0.2)
        metrics = requests.get(server.url + "/metrics", timeout=5).text
        assert 'vita_engine_restarts_total{engine="llm0"} 2.0' in metrics
        assert 'vita_engine_restarts_total{engine="llm1"} 1.0' in metrics
    finally:
        c.close()
        later.close()
    assert wait_until(lambda: not server.state.sessions)
