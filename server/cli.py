"""``vita-duplex`` / ``launch.py``: parse options, load the engine, serve until interrupted.

Flask is imported only once the engine is up: vLLM's worker processes are spawned and re-import the
main module, and vLLM 0.32's CPU kernel registration scans every loaded module, which fails on Flask's
request proxies. Keeping this module (and ``launch.py``) free of Flask imports at the top avoids that.
"""

from __future__ import annotations

import logging
import shutil
import signal
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engine.interface import Engine
from server.options import EngineOptions, ServerOptions, parse_options

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.serving import BaseWSGIServer

log = logging.getLogger("vita_duplex")

RANDOM_WEIGHTS_NOTICE = (
    "Demo mode: this server runs a tiny checkpoint with RANDOM weights, so replies are noise. "
    "Start it with --model_path /path/to/VITA1.5 to talk to VITA-1.5."
)


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


def llm_and_duplex_options(model_path: Path, eng: EngineOptions, tiny: bool):
    """Map the command line onto ``LlmOptions`` and ``DuplexOptions`` (tiny: CPU-sized settings)."""
    import torch

    from engine.duplex.options import DuplexOptions
    from engine.llm.options import LlmOptions
    from engine.speech.options import SpeechOptions

    on_cpu = not torch.cuda.is_available()
    kv_mb = eng.kv_cache_mb or (512 if on_cpu else 0)
    llm = LlmOptions(
        model_path=model_path, num_engines=eng.num_engines,
        devices=tuple(d.strip() for d in eng.devices.split(",") if d.strip()),
        gpu_memory_share=eng.gpu_memory_share, kv_cache_memory_bytes=(kv_mb << 20) if kv_mb else None,
        max_model_len=2048 if tiny else eng.max_model_len,
        max_new_tokens=min(eng.max_new_tokens, 64) if tiny else eng.max_new_tokens,
        dtype=eng.dtype, enforce_eager=eng.enforce_eager or (tiny and on_cpu),
    )
    # Random weights judge at random (most utterances would be "not addressed" and the demo silent),
    # so the demo answers everything unless the operator chose a policy.
    awakening = eng.awakening or ("always" if tiny else "model")
    duplex = DuplexOptions(awakening=awakening, streaming=not eng.no_streaming,  # type: ignore[arg-type]
                           max_frames=eng.max_frames, speech_device=eng.speech_device,
                           speech=SpeechOptions(trust_checkpoint_pickles=eng.trust_checkpoint_pickles))
    return llm, duplex


def load_engine(options: ServerOptions) -> Engine:
    """The VITA-1.5 engine for ``options.model_path``, or on the tiny random checkpoint when none is given."""
    try:
        from engine.duplex.engine import VitaEngine
    except ImportError as exc:
        raise EngineUnavailable(f"the engine's dependencies are not installed: {exc}") from exc
    tiny = options.model_path is None
    folder = tiny_checkpoint(Path(options.engine.tiny_dir).expanduser()) if tiny else Path(options.model_path)
    if not folder.is_dir():
        raise EngineUnavailable(f"--model_path {folder} is not a folder")
    llm, duplex = llm_and_duplex_options(folder, options.engine, tiny)
    try:
        engine = VitaEngine(llm, duplex)
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


def serve(options: ServerOptions, engine: Engine) -> None:
    """Serve ``engine`` until Ctrl-C, then close the sessions and the engine."""
    from server.app import server_state

    app, server = build(options, engine)
    scheme = "http" if options.no_tls else "https"
    host = "localhost" if options.ip in ("0.0.0.0", "::", "127.0.0.1") else options.ip
    log.info("serving on %s://%s:%d/ (max %d users)", scheme, host, server.server_port, options.max_users)
    if notice := engine.notice():
        print(f"\n{'=' * 78}\n  {notice}\n  Open {scheme}://{host}:{server.server_port}/\n{'=' * 78}\n",
              file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("shutting down")
    finally:
        server.server_close()
        server_state(app).close_all()
        engine.close()


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # `docker stop` / systemd: shut down as cleanly as on Ctrl-C


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    options = parse_options(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    logging.basicConfig(level=options.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine = load_engine(options)
    except EngineUnavailable as exc:
        print(f"vita-duplex: cannot start: {exc}", file=sys.stderr)
        return 2
    serve(options, engine)
    return 0
