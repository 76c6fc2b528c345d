"""The socket edge of the waiting room (:mod:`server.waiting_room`): tells waiting clients their place,
admits the first one when a session ends, and times out those who waited too long.

``server/app.py`` calls :meth:`Lobby.join`, :meth:`Lobby.leave`, :meth:`Lobby.session_started` and
:meth:`Lobby.session_ended` under the server's lock (they only touch the pure room), and :meth:`Lobby.admit`
/ :meth:`Lobby.announce` after releasing it: emitting and disconnecting must never happen under that lock,
since a disconnect runs the server's disconnect handler, which takes it.

One thread (``waiting-room``) runs only while someone waits: it wakes at the next timeout (at least once a
second, to notice a drain) and ends when the queue is empty.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from server import protocol as P
from server.waiting_room import Place, WaitingRoom

log = logging.getLogger(__name__)

POLL_S = 1.0
"""Longest sleep of the waiting-room thread (a drain is noticed within it)."""
REFRESH_S = 15.0
"""Waiting clients get a fresh estimate at least this often, even when nothing moved."""


class Lobby:
    """Glue between the pure :class:`WaitingRoom` and the Socket.IO server (see the module docstring)."""

    def __init__(
        self,
        room: WaitingRoom,
        lock: threading.Lock,
        has_free_slot: Callable[[], bool],
        open_session: Callable[[str], None],
        emit: Callable[[str, str, dict[str, Any]], None],
        disconnect: Callable[[str], None],
        draining: Callable[[], bool],
        drain_message: Callable[[], dict[str, Any]],
    ) -> None:
        """``has_free_slot`` and ``open_session(sid)`` are called under ``lock``; ``emit(sid, event, payload)``
        and ``disconnect(sid)`` outside it."""
        self.room = room
        self._lock = lock
        self._has_free_slot = has_free_slot
        self._open_session = open_session
        self._emit = emit
        self._disconnect = disconnect
        self._draining = draining
        self._drain_message = drain_message
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ under the server's lock

    def join(self, sid: str) -> Place | None:
        """Queue ``sid`` (the server is full); ``None`` when the queue is full too."""
        return self.room.join(sid)

    def leave(self, sid: str) -> bool:
        """``sid`` disconnected; True if it was waiting (the others move up: call :meth:`announce`)."""
        return self.room.leave(sid)

    def session_started(self, sid: str) -> None:
        self.room.session_started(sid)

    def session_ended(self, sid: str) -> None:
        self.room.session_ended(sid)

    # ------------------------------------------------------------------ outside the lock

    def admit(self) -> None:
        """Open sessions for the first waiters while slots are free (not while draining), then tell the rest."""
        failed: list[tuple[str, str]] = []
        with self._lock:
            while len(self.room) and not self._draining() and self._has_free_slot():
                sid = self.room.admit()
                if sid is None:
                    break
                try:
                    self._open_session(str(sid))  # its hello tells the client it is in
                    self.room.session_started(sid)
                    log.info("admitted a client from the waiting room (%d still waiting)", len(self.room))
                except Exception as exc:  # e.g. the engine is down: that client is told, the queue goes on
                    log.exception("could not open a session for a waiting client")
                    failed.append((str(sid), str(exc)))
        for sid, why in failed:
            self._tell_and_drop(sid, "engine", f"the server cannot open a conversation right now: {why}")
        self.announce()

    def announce(self) -> None:
        """Send every waiting client its place; start the timeout thread while anyone waits."""
        with self._lock:
            places = self.room.places()
            if places and not self._closed and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="waiting-room", daemon=True)
                self._thread.start()
        for p in places:
            self._emit(str(p.key), P.EV_WAITING, self._message(p))
        self._wake.set()

    def close(self) -> None:
        """Stop the thread and forget the queue (server shutdown); the clients are not told."""
        with self._lock:
            self._closed = True
            self.room.clear()
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    # ------------------------------------------------------------------ the thread

    def _message(self, p: Place) -> dict[str, Any]:
        return P.WaitingMsg(p.position, p.waiting, p.estimated_wait_s, self.room.timeout_s).to_wire()

    def _tell_and_drop(self, sid: str, code: P.ErrorCode, message: str) -> None:
        try:
            self._emit(sid, P.EV_ERROR, P.ErrorMsg(code, message, fatal=True).to_wire())
            self._disconnect(sid)
        except Exception:  # that client is gone already
            log.debug("could not drop waiting client %s", sid, exc_info=True)

    def _run(self) -> None:
        last_refresh = time.monotonic()
        while True:
            self._wake.clear()
            with self._lock:
                if self._closed or not len(self.room):
                    self._thread = None
                    return
                expired = self.room.expired()
                drained = self.room.clear() if self._draining() else []
                deadline = self.room.next_deadline()
                now = self.room.now()
            for sid in expired:
                log.info("a client waited %.0f s in the waiting room without a free session: dropped",
                         self.room.timeout_s)
                self._tell_and_drop(str(sid), "queue_timeout",
                                    f"no conversation became free within {self.room.timeout_s:g} s; try again later")
            for sid in drained:
                try:
                    self._emit(str(sid), P.EV_SERVER_DRAINING, self._drain_message())
                    self._disconnect(str(sid))
                except Exception:
                    log.debug("could not drop waiting client %s", sid, exc_info=True)
            if expired or drained or time.monotonic() - last_refresh >= REFRESH_S:
                last_refresh = time.monotonic()
                self.announce()
            wait = POLL_S if deadline is None else min(POLL_S, max(0.0, deadline - now))
            self._wake.wait(wait)
