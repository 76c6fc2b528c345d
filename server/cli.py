"""``vita-duplex`` / ``launch.py``: parse options, load the engine, serve until interrupted."""

from __future__ import annotations

import logging
import ssl
import sys
from pathlib import Path

from flask import Flask
from werkzeug.serving import BaseWSGIServer

from engine.interface import Engine
from server.app import create_app, server_state
from server.options import ServerOptions, parse_options
from server.serving import build_server
from server.tls import ensure_certificate, server_context

log = logging.getLogger("vita_duplex")


class EngineUnavailable(RuntimeError):
    """The conversation engine cannot be started (not installed, not wired, bad checkpoint)."""


def load_engine(options: ServerOptions) -> Engine:
    """The VITA-1.5 engine for ``options.model_path``.

    The real engine lands with the engine issues; until it is wired here the server refuses to start
    rather than pretend (there is deliberately no echo or demo mode).
    """
    raise EngineUnavailable(
        "the VITA-1.5 engine is not wired into the server yet (engine/ is being built in its own issues); "
        f"--model_path {options.model_path!r} was accepted but cannot be served"
    )


def tls_context(options: ServerOptions) -> ssl.SSLContext | None:
    """None for --no-tls; the operator's --cert/--key; else the self-signed one from --tls_dir."""
    if options.no_tls:
        return None
    if options.cert and options.key:
        cert, key = Path(options.cert), Path(options.key)
    else:
        cert, key = ensure_certificate(Path(options.tls_dir).expanduser(), options.ip)
    return server_context(cert, key)


def build(options: ServerOptions, engine: Engine) -> tuple[Flask, BaseWSGIServer]:
    """The app and its (not yet serving) HTTP(S) server, bound to ``options.ip:options.port``."""
    app = create_app(options, engine)
    return app, build_server(app, options.ip, options.port, tls_context(options))


def serve(options: ServerOptions, engine: Engine) -> None:
    """Serve ``engine`` until Ctrl-C, then close the sessions and the engine."""
    app, server = build(options, engine)
    scheme = "http" if options.no_tls else "https"
    host = "localhost" if options.ip in ("0.0.0.0", "::", "127.0.0.1") else options.ip
    log.info("serving on %s://%s:%d/ (max %d users)", scheme, host, server.server_port, options.max_users)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("shutting down")
    finally:
        server.server_close()
        server_state(app).close_all()
        engine.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    options = parse_options(argv)
    logging.basicConfig(level=options.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine = load_engine(options)
    except EngineUnavailable as exc:
        print(f"vita-duplex: cannot start: {exc}", file=sys.stderr)
        return 2
    serve(options, engine)
    return 0
