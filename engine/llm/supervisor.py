"""Engine supervision: a vLLM engine whose core dies is rebuilt in place, with backoff, while the others serve.

* :class:`RestartPlan` decides *when* (a pure state machine on times it is given, tested on virtual time):
  the first attempt ``backoff_s`` after the death is noticed, then twice the wait after each failure, capped
  at ``backoff_max_s``; after ``max_attempts`` consecutive failures it gives up (``dead``). A restarted
  engine that then serves for ``stable_s`` starts the next crash with a fresh backoff; one that dies sooner
  continues its streak, so a crash loop backs off too.
* :class:`EngineSupervisor` does it: a task on the engines' event loop notices a dead core within
  ``watch_s``, shuts the dead ``AsyncLLM`` down, and builds the new one on a thread of its own (an engine
  start blocks for seconds to minutes; the loop meanwhile serves every other engine). The new ``AsyncLLM``
  replaces the old one in the same :class:`~engine.llm.engine.LlmEngine`, so routing by engine index and
  each conversation's history (held by the conversation, not the engine) carry over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.interface import EngineState, EngineStatus
from engine.llm.engine import LlmEngine, shutdown_llm
from engine.llm.options import SupervisionOptions

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(slots=True)
class RestartPlan:
    """When one engine restarts. Pure: every method takes the time ``now``; nothing here sleeps or spawns."""

    options: SupervisionOptions
    state: EngineState = "ready"
    attempts: int = 0
    """Restart attempts started, ever."""
    restarts: int = 0
    """Successful restarts, ever."""
    streak: int = 0
    """Attempts since the engine last served for ``stable_s``."""
    next_at: float | None = None
    ready_since: float | None = None
    last_error: str | None = None

    def wait(self) -> float:
        """Backoff before the next attempt: ``backoff_s``·2^streak, capped."""
        o = self.options
        return min(o.backoff_s * 2.0 ** min(self.streak, 62), o.backoff_max_s)

    def _exhausted(self) -> bool:
        return bool(self.options.max_attempts) and self.streak >= self.options.max_attempts

    def died(self, now: float, why: str) -> None:
        """The serving engine was found dead: schedule its restart (or give up)."""
        if self.state != "ready":
            return
        self.last_error = why
        if self.ready_since is not None and now - self.ready_since >= self.options.stable_s:
            self.streak = 0
        if not self.options.enabled or self._exhausted():
            self.state, self.next_at = "dead", None
            return
        self.state, self.next_at = "restarting", now + self.wait()

    def due(self, now: float) -> bool:
        """Whether an attempt should start now."""
        return self.state == "restarting" and self.next_at is not None and now >= self.next_at

    def begin(self, now: float) -> None:
        """An attempt starts now."""
        self.attempts += 1
        self.streak += 1
        self.state, self.next_at = "starting", None

    def failed(self, now: float, why: str) -> None:
        """The attempt failed: wait longer before the next (or give up)."""
        self.last_error = why
        if self._exhausted():
            self.state, self.next_at = "dead", None
        else:
            self.state, self.next_at = "restarting", now + self.wait()

    def succeeded(self, now: float) -> None:
        """The attempt succeeded: the engine serves again."""
        self.restarts += 1
        self.state, self.next_at, self.ready_since = "ready", None, now

    def give_up(self, why: str) -> None:
        """No further attempt (the server is shutting down); an attempt in progress still finishes."""
        if self.state == "restarting":
            self.state, self.next_at, self.last_error = "dead", None, why


class EngineSupervisor:
    """Restarts the dead ones of ``engines``. :meth:`run` goes on the engines' loop; the rest is thread-safe."""

    def __init__(self, engines: Sequence[LlmEngine], options: SupervisionOptions | None = None,
                 clock: Clock = time.monotonic) -> None:
        self.options = options or SupervisionOptions()
        self._engines = list(engines)
        self._plans = [RestartPlan(self.options, ready_since=clock()) for _ in self._engines]
        self._clock = clock
        self._lock = threading.Lock()  # plans: changed on the loop, read by probes on server threads
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ any thread

    def statuses(self) -> tuple[EngineStatus, ...]:
        """Each engine's state, restart counts and last error, as of now."""
        now = self._clock()
        out = []
        with self._lock:
            for engine, plan in zip(self._engines, self._plans, strict=True):
                state: EngineState = plan.state
                if state == "ready" and engine.dead_reason() is not None:
                    # Died since the last look: say what will happen to it.
                    state = "restarting" if self.options.enabled and not self._stopping.is_set() else "dead"
                next_s = None if plan.next_at is None else round(max(0.0, plan.next_at - now), 2)
                out.append(EngineStatus(
                    name=engine.name, state=state, active=engine.load, restarts=plan.restarts,
                    restart_attempts=plan.attempts, next_restart_s=next_s,
                    last_error=plan.last_error,
                    start_seconds=round(engine.start_seconds, 2)))
        return tuple(out)

    def ready(self) -> list[int]:
        """Indexes of the engines that can serve now."""
        return [i for i, e in enumerate(self._engines) if e.dead_reason() is None]

    def stop(self) -> None:
        """No more restarts from now on; returns at once (an attempt in progress finishes: see :meth:`join`)."""
        self._stopping.set()
        with self._lock:
            for plan in self._plans:
                plan.give_up("not restarted: the server is shutting down")
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
                loop.call_soon_threadsafe(wake.set)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for restarts in progress (their new engine is shut down); True if none is left."""
        deadline = time.monotonic() + timeout
        for th in list(self._threads):
            th.join(max(0.0, deadline - time.monotonic()))
        return not any(th.is_alive() for th in self._threads)

    # ------------------------------------------------------------------ loop thread

    async def run(self) -> None:
        """Watch the engines until :meth:`stop`: notice deaths within ``watch_s``, restart when due."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while not self._stopping.is_set():
            self.check()
            with contextlib.suppress(TimeoutError):
                # A periodic look, not a wait for some event: a dead core gives no signal of its own.
                await asyncio.wait_for(self._wake.wait(), self.options.watch_s)
            self._wake.clear()

    def check(self) -> None:
        """One look at every engine (loop thread): release the newly dead, start the attempts now due."""
        now = self._clock()
        for i, (engine, plan) in enumerate(zip(self._engines, self._plans, strict=True)):
            if engine.closed:
                continue
            if plan.state == "ready" and (why := engine.dead_reason()) is not None:
                with self._lock:
                    plan.died(now, why)
                engine.release()
                log.warning("engine %s died (%s); %s", engine.name, why,
                            f"restart in {plan.wait():.1f} s" if plan.state == "restarting" else "not restarting")
            if plan.due(now) and not self._stopping.is_set():
                with self._lock:
                    plan.begin(now)
                log.info("engine %s: restart attempt %d", engine.name, plan.attempts)
                self._start(i)

    def _start(self, i: int) -> None:
        """Build engine ``i``'s new AsyncLLM on a thread; its result comes back to the loop (:meth:`_built`)."""
        loop, engine = asyncio.get_running_loop(), self._engines[i]

        def build() -> None:
            started = time.perf_counter()
            llm: Any = None
            error: str | None = None
            try:
                llm = engine.build_llm()
            except Exception as exc:  # reported as the attempt's failure, retried after the backoff
                log.exception("engine %s failed to restart", engine.name)
                error = f"restart failed: {type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - started
            try:
                loop.call_soon_threadsafe(self._built, i, llm, error, seconds)
            except RuntimeError:  # the loop is gone: nobody will serve this engine
                if llm is not None:
                    shutdown_llm(llm)

        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=build, name=f"restart-{engine.name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _built(self, i: int, llm: Any, error: str | None, seconds: float) -> None:
        engine, plan, now = self._engines[i], self._plans[i], self._clock()
        if llm is not None and (self._stopping.is_set() or engine.closed):
            shutdown_llm(llm)
            error = "not restarted: the server is shutting down"
            llm = None
        with self._lock:
            if llm is None:
                plan.failed(now, error or "restart failed")
                if self._stopping.is_set():
                    plan.give_up(error or "restart failed")
            else:
                engine.attach(llm, seconds)
                plan.succeeded(now)
        if plan.state == "restarting":
            log.warning("engine %s: %s; next attempt in %.1f s", engine.name, error, plan.wait())
        elif plan.state == "dead":
            log.error("engine %s: %s; giving up after %d attempts", engine.name, error, plan.attempts)
        if self._wake is not None:
            self._wake.set()
