"""The Flask + Flask-SocketIO application: routes, Socket.IO handlers, the session registry."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, jsonify, request, send_from_directory
from flask_socketio import SocketIO
from socketio import packet as sio_packet
from socketio.exceptions import ConnectionRefusedError as SocketRefused  # carries its message to the client

from engine.interface import Engine
from server import protocol as P
from server.atomic_packets import make_packet_sends_atomic
from server.drain import DrainState
from server.lan import join_info
from server.lobby import Lobby
from server.metrics import ServerMetrics
from server.options import ServerOptions
from server.packet_guard import BadEvent, PacketGuard, Violation, library_logger
from server.security import SecurityPolicy, install, policy_of
from server.session import Session
from server.waiting_room import WaitingRoom
from vad.silero import SileroModel, shared_model

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


@dataclass
class ServerState:
    """What one running server shares across sessions (never any per-user data outside a Session)."""

    options: ServerOptions
    engine: Engine
    socketio: SocketIO
    vad_model: SileroModel
    metrics: ServerMetrics
    sessions: dict[str, Session] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    guard: PacketGuard | None = None
    """Checks every client message below the handlers (set by ``_add_socket_handlers``)."""
    drain: DrainState = field(default_factory=DrainState)
    """Set once a graceful shutdown begins (``server.drain``): no new sessions, /readyz 503."""
    lobby: Lobby | None = None
    """The waiting room for clients beyond --max_users (``server.lobby``; set by ``_add_socket_handlers``)."""

    def close_all(self) -> None:
        """Close every session (server shutdown)."""
        if self.lobby is not None:
            self.lobby.close()
        with self.lock:
            sessions = list(self.sessions.values())
            self.sessions.clear()
        for s in sessions:
            s.close()


def server_state(app: Flask) -> ServerState:
    """The :class:`ServerState` of an app made by :func:`create_app`."""
    return app.extensions["vita_duplex"]


def create_app(options: ServerOptions, engine: Engine, vad_model: SileroModel | None = None) -> Flask:
    """Build the web app around any :class:`~engine.interface.Engine`."""
    policy = SecurityPolicy.from_options(options)
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024  # HTTP bodies: nothing here takes uploads
    socketio = SocketIO(
        app,
        async_mode="threading",  # explicit: otherwise eventlet/gevent would be picked when installed
        async_handlers=False,  # handlers of one connection run in order: audio packets must not reorder
        max_http_buffer_size=options.limits.max_message_bytes,
        ping_interval=25,
        ping_timeout=20,
        logger=library_logger("socketio"),  # one line per problem, rate-limited, printed once (packet_guard)
        engineio_logger=library_logger("engineio"),
        cors_allowed_origins=policy.origin_allowed,  # same origin or an --allowed_hosts name (security.py)
    )
    make_packet_sends_atomic(socketio.server)
    sessions: dict[str, Session] = {}
    drain = DrainState()
    metrics = ServerMetrics(lambda: len(sessions), lambda: _engine_ok(engine), engine.statuses,
                            lambda: 1.0 if drain.active else 0.0)
    state = ServerState(options, engine, socketio, vad_model or shared_model(), metrics, sessions, drain=drain)
    app.extensions["vita_duplex"] = state
    _add_routes(app, state)
    _add_socket_handlers(socketio, state)
    install(app, policy)  # outermost: Host check and headers cover the Socket.IO endpoint too
    return app


def _engine_ok(engine: Engine) -> float:
    try:
        return 1.0 if engine.health().get("ok") else 0.0
    except Exception:  # a broken engine is unhealthy, not a failed scrape
        return 0.0


def _add_routes(app: Flask, state: ServerState) -> None:
    @app.get("/")
    def index() -> Any:
        return send_from_directory(STATIC_DIR, "index.html")

    @app.get("/healthz")
    def healthz() -> Any:
        """Liveness: 503 only when the server cannot recover without a restart (no engine left to restart)."""
        body = _probe(state)
        return jsonify({**body, "ok": body["live"]}), 200 if body["live"] else 503

    @app.get("/readyz")
    def readyz() -> Any:
        """Readiness: 200 only while a new client would be served (an engine ready, not draining, not full)."""
        body = _probe(state)
        return jsonify({**body, "ok": body["ready"]}), 200 if body["ready"] else 503

    @app.get("/metrics")
    def metrics() -> Any:
        return Response(state.metrics.exposition(), mimetype="text/plain; version=0.0.4")

    @app.get("/join")
    def join() -> Any:
        """Addresses of this page for other devices on the LAN (the presenter's QR code; server/lan.py).
        Needs the access token when one is set: the answer names the machine's LAN addresses."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if policy_of(current_app).token is not None and not (
                scheme.lower() == "bearer" and policy_of(current_app).token_ok(given.strip())):
            return jsonify({"error": "access token required"}), 401
        port = request.host.rpartition(":")[2] if request.host.rpartition(":")[2].isdigit() else None
        return jsonify(join_info(state.options.ip, request.scheme, int(port) if port else None))


def _probe(state: ServerState) -> dict[str, Any]:
    """What /healthz and /readyz report: engine health with per-engine state, sessions, drain, and why
    the server is not ready (``not_ready``: ``engine``, ``draining``, ``full``)."""
    try:
        engine = state.engine.health()
    except Exception as exc:  # a broken engine must show up here, not crash the probe
        engine = {"ok": False, "live": False, "error": str(exc)}
    with state.lock:
        n = len(state.sessions)
        waiting = len(state.lobby.room) if state.lobby else 0
    engine_ok = bool(engine.get("ok"))
    not_ready = [why for why, bad in (("engine", not engine_ok), ("draining", state.drain.active),
                                      ("full", n >= state.options.max_users)) if bad]
    engines = engine.get("engines")
    engines = engines if isinstance(engines, list) else []
    return {"live": bool(engine.get("live", engine_ok)), "ready": not not_ready, "not_ready": not_ready,
            "sessions": n, "max_users": state.options.max_users, "waiting": waiting, "draining": state.drain.active,
            "drain_seconds_left": state.drain.seconds_left(),
            "engines": [{"name": e.get("name"), "state": e.get("state")} for e in engines if isinstance(e, dict)],
            "engine": engine}


def _sid() -> str:
    """The Socket.IO session id of the event being handled (Flask-SocketIO sets it on the request)."""
    return request.sid  # type: ignore[attr-defined]


def _guarded(state: ServerState, handler: Callable[[Session, Any], Any], acked: bool = False) -> Callable[..., Any]:
    """Run ``handler`` for the calling session; map bad input to an ``error`` event, never raise.

    A python-socketio handler: ``sid``, then the event's arguments (see where it is registered).
    ``acked``: the event may carry an acknowledgement, which the library writes as soon as this returns;
    the session's queued messages are written first, so the client reads them in the order they arose."""

    def run(sid: str, data: Any = None, *_extra: Any) -> Any:
        session = state.sessions.get(sid)
        if session is None:
            return {"ok": False, "code": "not_started", "message": "no session"}
        try:
            return handler(session, data)
        except P.ProtocolError as exc:
            session.send_error(exc.code, exc.message)
            return {"ok": False, "code": exc.code, "message": exc.message}
        except Exception:
            log.exception("session %s: handler failed", session.id)
            session.send_error("internal", "the server failed to handle that event; the session goes on")
            return {"ok": False, "code": "internal"}
        finally:
            if acked:
                session.flush()

    return run


def _add_socket_handlers(socketio: SocketIO, state: ServerState) -> None:
    options = state.options
    server = socketio.server

    def session_of(eio_sid: str) -> Session | None:
        sid = server.manager.sid_from_eio_sid(eio_sid, "/")
        return state.sessions.get(sid) if sid is not None else None

    def on_bad_event(eio_sid: str, bad: BadEvent) -> None:
        """An event name no handler may see: ``bad_type`` to that session, and nothing else happens.
        (A client still waiting in the lobby has no session: it only gets the acknowledgement it asked for.)"""
        session = session_of(eio_sid)
        if session is not None:
            reserved = bad.name in P.RESERVED_EVENTS
            session.send_error("bad_type", (
                f"{'reserved' if reserved else 'unknown'} event {P.cut(bad.name, 40)!r}: clients send "
                + ", ".join(P.CLIENT_EVENTS)
            ))
        if bad.ack_id is not None:  # the client waits for an answer: give it one, after the error
            if session is not None:
                session.flush()
            server._send_packet(eio_sid, server.packet_class(
                sio_packet.ACK, namespace="/", id=bad.ack_id, data=[{"ok": False, "code": "bad_type"}]))

    def on_violation(eio_sid: str, v: Violation) -> bool:
        """A broken packet: tell the session (fatal; its log line is the only one) before the guard closes."""
        session = session_of(eio_sid)
        if session is None:
            return False
        session.send_error("bad_packet", f"{v.detail}; the connection is closed", fatal=True)
        session.flush()
        return True

    guard = PacketGuard(server, P.CLIENT_EVENTS, options.limits.max_message_bytes, on_bad_event, on_violation,
                        options.limits.connect_timeout_s)
    state.guard = guard.install()

    def end_connection(sid: str, eio_sid: str) -> None:
        """Close a session from the server side (idle timeout): the Socket.IO namespace first (its
        DISCONNECT tells clients not to reconnect; on_disconnect closes the session), then the transport."""
        try:
            server.disconnect(sid)
        finally:
            guard.close_transport(eio_sid)

    def open_session(sid: str, eio_sid: str | None) -> None:
        """Open the session of ``sid`` (state.lock held): on connect, or on admission from the waiting room."""
        state.sessions[sid] = Session(
            sid,
            options,
            state.engine,
            send=lambda event, *args: socketio.emit(event, args if len(args) > 1 else args[0], to=sid),
            disconnect=lambda: end_connection(sid, eio_sid or ""),
            vad_model=state.vad_model,
            metrics=state.metrics,
        )
        lobby.session_started(sid)

    lobby = state.lobby = Lobby(
        WaitingRoom(options.queue_size, options.queue_timeout_s, options.max_users),
        state.lock,
        has_free_slot=lambda: len(state.sessions) < options.max_users,
        open_session=lambda sid: open_session(sid, server.manager.eio_sid_from_sid(sid, "/")),
        emit=lambda sid, event, msg: socketio.emit(event, msg, to=sid),
        disconnect=lambda sid: end_connection(sid, server.manager.eio_sid_from_sid(sid, "/") or ""),
        draining=lambda: state.drain.active,
        drain_message=lambda: P.ServerDrainingMsg(seconds_left=round(state.drain.seconds_left() or 0.0, 1)).to_wire(),
    )

    @socketio.on("connect")
    def on_connect(auth: Any = None) -> None:
        # The Host was checked by the middleware before the handshake; the token comes in the auth payload.
        if not policy_of(current_app).socket_auth_ok(auth, request.remote_addr):
            raise SocketRefused("access token missing or wrong", {"code": "unauthorized"})
        sid = _sid()
        eio_sid = server.manager.eio_sid_from_sid(sid, "/")
        with state.lock:
            if state.drain.active:  # graceful shutdown (server/drain.py): this server takes nobody new
                left = state.drain.seconds_left() or 0.0
                raise SocketRefused(f"server shutting down (draining, {left:.0f} s left); connect again later",
                                    {"code": "draining", "seconds_left": round(left, 1)})
            if len(state.sessions) >= options.max_users:
                place = lobby.join(sid)  # full: wait in line (server/lobby.py) while the queue has room
                if place is None:
                    log.warning("refusing a client: %d of %d users connected, %d waiting", len(state.sessions),
                                options.max_users, len(lobby.room))
                    waiting = f" and {len(lobby.room)} are waiting" if options.queue_size else ""
                    raise SocketRefused(f"server full: {options.max_users} of {options.max_users} users are "
                                        f"connected{waiting}, try again later", {"code": "full"})
            else:
                place = None
                try:
                    open_session(sid, eio_sid)
                except Exception as exc:  # e.g. the engine is down: refuse with the reason instead of a bare drop
                    log.exception("could not open a session")
                    raise SocketRefused(f"the server cannot open a conversation right now: {exc}") from exc
        if place is not None:
            log.info("a client waits for a session: number %d in line", place.position)
            lobby.announce()
            return
        log.info("session %s connected (%d/%d)", state.sessions[sid].id, len(state.sessions), options.max_users)

    @socketio.on("disconnect")
    def on_disconnect(reason: Any = None) -> None:
        sid = _sid()
        with state.lock:
            session = state.sessions.pop(sid, None)
            waited = lobby.leave(sid)
            if session is not None:
                lobby.session_ended(sid)
        if session is not None:
            session.close()
            lobby.admit()  # a slot is free: the first in line gets it
        elif waited:
            lobby.announce()  # the ones behind it move up

    # Only these three names reach a handler: the guard answers every other one (connect, message, ...).
    # Straight on the Socket.IO server: Flask-SocketIO would build a Flask request context for each of the
    # 50 mic packets a second of every user (8 users: 0.99 -> 0.81 ms of server CPU per packet without it).
    server.on(P.EV_AUDIO, _guarded(state, Session.on_audio), namespace="/")
    server.on(P.EV_FRAME, _guarded(state, Session.on_frame), namespace="/")
    server.on(P.EV_CONTROL, _guarded(state, Session.on_control, acked=True), namespace="/")
