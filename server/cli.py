"""``vita-duplex`` / ``launch.py``: parse options, load the engine, serve until interrupted.

Flask is imported only once the engine is up: vLLM's worker processes are spawned and re-import the
main module, and vLLM 0.32's CPU kernel registration scans every loaded module, which fails on Flask's
request proxies. Keeping this module (and ``launch.py``) free of Flask imports at the top avoids that.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import ssl
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from engine.interface import Engine
from server.options import ServerOptions, parse_command_line, print_config

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.serving import BaseWSGIServer

    from engine.duplex.options import DuplexOptions
    from engine.llm.options import LlmOptions
    from server.drain import Drainer

log = logging.getLogger("vita_duplex")

RANDOM_WEIGHTS_NOTICE = "Demo mode: this server runs random weights, so the assistant's replies are noise."
"""What every user of the default run sees (the page shows it); operator advice goes to the log instead."""
RANDOM_WEIGHTS_ADVICE = "Operator: start the server with --model_path /path/to/VITA1.5 to talk to VITA-1.5."


class EngineUnavailable(RuntimeError):
    """The conversation engine cannot be started (not installed, bad checkpoint, no device)."""


TINY_FORMAT = "vita-duplex tiny checkpoint 2 (release layout, Qwen2.5 tokenizer, bf16)"
"""Written into the ``.complete`` marker; a cached checkpoint of another format is made anew."""


def tiny_checkpoint(folder: Path) -> Path:
    """The default run's tiny random checkpoint, written once into ``folder`` (outside the source tree)."""
    from engine.tiny_checkpoint import write_tiny_checkpoint

    marker = folder / ".complete"
    if marker.is_file() and marker.read_text().strip() == TINY_FORMAT:
        return folder
    if marker.is_file():  # ours, from an older version: replace it whole (stale shards would linger)
        log.info("replacing the tiny checkpoint in %s (older format)", folder)
        shutil.rmtree(folder)
    log.info("writing the tiny random checkpoint to %s (once)", folder)
    write_tiny_checkpoint(folder, seed=0)
    marker.write_text(TINY_FORMAT + "\n")
    return folder


def llm_and_duplex_options(options: ServerOptions, model_path: Path, tiny: bool,
                           on_cpu: bool) -> tuple[LlmOptions, DuplexOptions]:
    """The engine's own options, as configured, for ``model_path``; tiny: contexts and replies capped to CPU
    size, and an unset --awakening answers everything."""
    llm = replace(options.llm, model_path=model_path)
    if tiny:  # the random demo checkpoint: short contexts and replies keep it quick on a CPU
        llm = replace(llm, max_model_len=min(llm.max_model_len, 2048), max_new_tokens=min(llm.max_new_tokens, 64),
                      enforce_eager=llm.enforce_eager or on_cpu)
    duplex = options.duplex
    if duplex.awakening is None:
        # Random weights judge at random (most utterances would be "not addressed" and the demo silent),
        # so the demo answers everything unless the operator chose a policy.
        duplex = replace(duplex, awakening="always" if tiny else "model")
    return llm, duplex


def load_engine(options: ServerOptions) -> Engine:
    """The VITA-1.5 engine for ``options.model_path``, or on the tiny random checkpoint when none is given."""
    try:
        import torch

        from engine.duplex.engine import VitaEngine
    except ImportError as exc:
        raise EngineUnavailable(f"the engine's dependencies are not installed: {exc}") from exc
    tiny = options.model_path is None
    folder = tiny_checkpoint(Path(options.tiny_dir).expanduser()) if options.model_path is None \
        else Path(options.model_path)
    if not folder.is_dir():
        raise EngineUnavailable(f"--model_path {folder} is not a folder")
    llm, duplex = llm_and_duplex_options(options, folder, tiny, on_cpu=not torch.cuda.is_available())
    try:
        engine = VitaEngine(llm, duplex, options.restart)
    except Exception as exc:
        raise EngineUnavailable(f"cannot start VITA-1.5 from {folder}: {exc}") from exc
    if tiny:
        engine.notice_text = RANDOM_WEIGHTS_NOTICE
    return engine


def tls_context(options: ServerOptions) -> ssl.SSLContext | None:
    """None for --no-tls; the operator's --cert/--key; else the self-signed one from --tls_dir."""
    from server.tls import ensure_certificate, server_context

    if options.no_tls:
        return None
    if options.cert and options.key:
        cert, key = Path(options.cert), Path(options.key)
    else:
        cert, key = ensure_certificate(Path(options.tls_dir).expanduser(), options.ip)
    return server_context(cert, key)


def build(options: ServerOptions, engine: Engine) -> tuple[Flask, BaseWSGIServer]:
    """The app and its (not yet serving) HTTP(S) server, bound to ``options.ip:options.port``."""
    from server.app import create_app
    from server.serving import build_server

    app = create_app(options, engine)
    return app, build_server(app, options.ip, options.port, tls_context(options))


class _SigtermDrain:
    """SIGTERM while serving: the first one drains (``server.drain``) on a thread of its own, then stops the
    HTTP server; a second one stops at once, as Ctrl-C does. The handler itself only starts things."""

    def __init__(self, drainer: Drainer, server: BaseWSGIServer) -> None:
        self._drainer = drainer
        self._server = server
        self._thread: threading.Thread | None = None

    def __call__(self, _signum: int, _frame: object) -> None:
        if self._thread is None:
            log.info("SIGTERM: draining (a second SIGTERM stops at once)")
            self._thread = threading.Thread(target=self._run, name="drain", daemon=True)
            self._thread.start()
            return
        self._drainer.abort()
        raise KeyboardInterrupt

    def _run(self) -> None:
        try:
            self._drainer.run()
        except Exception:  # whatever failed, the server must still stop
            log.exception("drain failed")
        finally:
            self._server.shutdown()  # serve_forever returns; serve() closes the rest

    def join(self, timeout: float) -> None:
        """Wait for the drain thread (if a drain began)."""
        if self._thread is not None:
            self._thread.join(timeout)


def serve(options: ServerOptions, engine: Engine) -> None:
    """Serve ``engine`` until SIGTERM (drained first) or Ctrl-C (at once); then close the sessions and the engine."""
    from server.app import server_state
    from server.drain import Drainer

    app, server = build(options, engine)
    scheme = "http" if options.no_tls else "https"
    host = "localhost" if options.ip in ("0.0.0.0", "::", "127.0.0.1") else options.ip
    log.info("serving on %s://%s:%d/ (max %d users)", scheme, host, server.server_port, options.max_users)
    if notice := engine.notice():
        advice = f"\n  {RANDOM_WEIGHTS_ADVICE}" if options.model_path is None else ""
        print(f"\n{'=' * 78}\n  {notice}{advice}\n  Open {scheme}://{host}:{server.server_port}/\n{'=' * 78}\n",
              file=sys.stderr, flush=True)
    on_sigterm = _SigtermDrain(Drainer(server_state(app), options.drain_s), server)
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("shutting down")
    finally:
        # Closing the engines must not be cut short (their processes would be left behind): a SIGTERM now
        # only gets logged; SIGKILL still ends everything.
        signal.signal(signal.SIGTERM, lambda *_: log.info("SIGTERM: already shutting down"))
        server.server_close()
        server_state(app).close_all()
        on_sigterm.join(10)
        engine.close()
        signal.signal(signal.SIGTERM, previous)
    log.info("stopped")


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # before serving (engine start): stop as on Ctrl-C; serve() drains instead


def with_access_token(options: ServerOptions) -> ServerOptions:
    """``options`` with the token from --access_token, --access_token_file or $VITA_ACCESS_TOKEN folded into
    ``security.access_token``: read once, before the engine loads, so a bad file fails the start at once."""
    from server.security import resolve_access_token

    token = resolve_access_token(options.security, os.environ)
    return replace(options, security=replace(options.security, access_token=token, access_token_file=None))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    command = parse_command_line(argv)
    options = command.options
    if command.print_config:  # before the token file is read: it is the configuration, not its result
        sys.stdout.write(print_config(options))
        return 0
    try:
        options = with_access_token(options)
    except ValueError as exc:
        print(f"vita-duplex: cannot start: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    logging.basicConfig(level=options.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine = load_engine(options)
    except EngineUnavailable as exc:
        print(f"vita-duplex: cannot start: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # SIGTERM or Ctrl-C while the engine was starting: nothing to drain
        log.info("stopped while starting")
        return 0
    serve(options, engine)
    return 0
