"""Graceful shutdown: on SIGTERM the server drains before it exits.

1. It stops accepting: ``/readyz`` answers 503 (``draining``) and new Socket.IO connections are refused
   with a reason; the engine stops restarting failed instances.
2. Every connected client gets ``server_draining`` with the seconds left (docs/protocol.md).
3. Replies in flight (being generated, sent, played, or an utterance being judged) may finish, for at most
   ``--drain_s`` seconds.
4. Every session is closed (its client disconnected); the caller then stops the HTTP server, closes the
   engine and exits 0.

:class:`DrainState` is the shared flag and deadline (on an injected clock); :class:`Drainer` runs the steps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from server import protocol as P

if TYPE_CHECKING:
    from server.app import ServerState
    from server.session import Session

log = logging.getLogger(__name__)

Clock = Callable[[], float]

POLL_S = 0.05
"""How often the drain looks whether the sessions' replies are over (they give no signal of their own)."""


class DrainState:
    """Whether the server drains, and until when. Thread-safe."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._deadline: float | None = None

    def begin(self, drain_s: float) -> bool:
        """Start draining for ``drain_s`` seconds from now; False if already draining (the deadline stays)."""
        with self._lock:
            if self._deadline is not None:
                return False
            self._deadline = self._clock() + max(0.0, drain_s)
            return True

    @property
    def active(self) -> bool:
        """Whether a drain has begun (it never ends: the server exits after it)."""
        return self._deadline is not None

    def seconds_left(self) -> float | None:
        """Seconds until the drain deadline (0 once passed); ``None`` when not draining."""
        deadline = self._deadline
        return None if deadline is None else max(0.0, deadline - self._clock())


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What a drain did."""

    seconds: float
    """From its start until every session was closed."""
    sessions: int
    """Sessions connected when it began (each was told)."""
    cut_short: int
    """Sessions whose reply was still going at the deadline."""


def session_busy(session: Session) -> bool:
    """A reply of ``session`` is being generated, sent or played, or an utterance of it awaits its verdict."""
    machine = session.machine
    # Read without the session's lock: the drain looks again every POLL_S, and a reply that starts between
    # two looks is seen at the next one (only the very last look before closing could miss one).
    return machine.audible() or machine.judging is not None or machine.waiting is not None


class Drainer:
    """Runs the drain of one server (see the module docstring); :meth:`run` blocks until it is done."""

    def __init__(self, state: ServerState, drain_s: float) -> None:
        self._state = state
        self._drain_s = drain_s
        self._abort = threading.Event()

    def abort(self) -> None:
        """Stop waiting for replies: close the sessions now (a second SIGTERM)."""
        self._abort.set()

    def run(self) -> DrainReport:
        """Drain: refuse new sessions, tell the connected ones, wait for their replies, close them."""
        state, started = self._state, time.monotonic()
        state.drain.begin(self._drain_s)
        try:
            state.engine.begin_shutdown()
        except Exception:  # the drain must go on whatever the engine does
            log.exception("engine.begin_shutdown failed")
        with state.lock:
            sessions = dict(state.sessions)
        left = state.drain.seconds_left() or 0.0
        log.info("draining: %d session(s), up to %.0f s for their replies", len(sessions), left)
        msg = P.ServerDrainingMsg(seconds_left=round(left, 1)).to_wire()
        for sid in sessions:
            try:
                state.socketio.emit(P.EV_SERVER_DRAINING, msg, to=sid)
            except Exception:  # that client is gone already; the others still get theirs
                log.debug("could not tell %s about the drain", sid, exc_info=True)
        while not self._abort.is_set() and (state.drain.seconds_left() or 0.0) > 0:
            with state.lock:
                current = list(state.sessions.values())
            if not any(session_busy(s) for s in current):
                break
            self._abort.wait(POLL_S)
        with state.lock:
            remaining = dict(state.sessions)
        cut_short = sum(1 for s in remaining.values() if session_busy(s))
        for sid in remaining:
            try:
                # The namespace disconnect tells the client the server ended it (no reconnect loop);
                # the disconnect handler closes the session.
                state.socketio.server.disconnect(sid)
            except Exception:
                log.debug("could not disconnect %s", sid, exc_info=True)
        state.close_all()
        report = DrainReport(round(time.monotonic() - started, 3), len(sessions), cut_short)
        log.info("drained in %.1f s: %d session(s) closed, %d reply(ies) cut short", report.seconds,
                 report.sessions, report.cut_short)
        return report
