"""The Flask + Flask-SocketIO application: routes, Socket.IO handlers, the session registry."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request, send_from_directory
from flask_socketio import SocketIO
from socketio.exceptions import ConnectionRefusedError as SocketRefused  # carries its message to the client

from engine.interface import Engine
from server import protocol as P
from server.atomic_packets import make_packet_sends_atomic
from server.metrics import ServerMetrics
from server.options import ServerOptions
from server.session import Session
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

    def close_all(self) -> None:
        """Close every session (server shutdown)."""
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
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024  # HTTP bodies: nothing here takes uploads
    socketio = SocketIO(
        app,
        async_mode="threading",  # explicit: otherwise eventlet/gevent would be picked when installed
        async_handlers=False,  # handlers of one connection run in order: audio packets must not reorder
        max_http_buffer_size=options.limits.max_message_bytes,
        ping_interval=25,
        ping_timeout=20,
    )
    make_packet_sends_atomic(socketio.server)
    sessions: dict[str, Session] = {}
    metrics = ServerMetrics(lambda: len(sessions), lambda: _engine_ok(engine))
    state = ServerState(options, engine, socketio, vad_model or shared_model(), metrics, sessions)
    app.extensions["vita_duplex"] = state
    _add_routes(app, state)
    _add_socket_handlers(socketio, state)
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
        try:
            engine = state.engine.health()
        except Exception as exc:  # a broken engine must show up here, not crash the probe
            engine = {"ok": False, "error": str(exc)}
        with state.lock:
            n = len(state.sessions)
        ok = bool(engine.get("ok"))
        body = {"ok": ok, "sessions": n, "max_users": state.options.max_users, "engine": engine}
        return jsonify(body), 200 if ok else 503

    @app.get("/metrics")
    def metrics() -> Any:
        return Response(state.metrics.exposition(), mimetype="text/plain; version=0.0.4")


def _guarded(state: ServerState, handler: Callable[[Session, Any], Any], acked: bool = False) -> Callable[..., Any]:
    """Run ``handler`` for the calling session; map bad input to an ``error`` event, never raise.

    ``acked``: the event may carry an acknowledgement, which the library writes as soon as this returns;
    the session's queued messages are written first, so the client reads them in the order they arose."""

    def run(data: Any = None, *_extra: Any) -> Any:
        session = state.sessions.get(request.sid)
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

    @socketio.on("connect")
    def on_connect(auth: Any = None) -> None:
        sid = request.sid
        with state.lock:
            if len(state.sessions) >= options.max_users:
                log.warning("refusing a client: %d of %d users connected", len(state.sessions), options.max_users)
                raise SocketRefused(
                    f"server full: {options.max_users} of {options.max_users} users are connected, try again later"
                )
            try:
                state.sessions[sid] = Session(
                    sid,
                    options,
                    state.engine,
                    send=lambda event, *args: socketio.emit(event, args if len(args) > 1 else args[0], to=sid),
                    disconnect=lambda: socketio.server.disconnect(sid),
                    vad_model=state.vad_model,
                    metrics=state.metrics,
                )
            except Exception as exc:  # e.g. the engine is down: refuse with the reason instead of a bare drop
                log.exception("could not open a session")
                raise SocketRefused(f"the server cannot open a conversation right now: {exc}") from exc
        log.info("session %s connected (%d/%d)", state.sessions[sid].id, len(state.sessions), options.max_users)

    @socketio.on("disconnect")
    def on_disconnect(reason: Any = None) -> None:
        with state.lock:
            session = state.sessions.pop(request.sid, None)
        if session is not None:
            session.close()

    socketio.on(P.EV_AUDIO)(_guarded(state, Session.on_audio))
    socketio.on(P.EV_FRAME)(_guarded(state, Session.on_frame))
    socketio.on(P.EV_CONTROL)(_guarded(state, Session.on_control, acked=True))

    @socketio.on("*")
    def on_unknown(event: str, *args: Any) -> None:
        session = state.sessions.get(request.sid)
        if session is not None:
            session.send_error("bad_type", f"unknown event {str(event)[:40]!r} (known: audio, frame, control)")
