"""Every server option, typed, with its default and help text in one place.

``launch.py --help`` is generated from these dataclasses, so the two can never disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.echo import EchoOptions
from vad.options import VadOptions


def default_tls_dir() -> Path:
    """Where the self-signed certificate lives: outside the source tree, per user."""
    if env := os.environ.get("VITA_DUPLEX_TLS_DIR"):
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "vita-duplex" / "tls"


def _opt(default: Any, help_text: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass(frozen=True, slots=True)
class LimitOptions:
    """Per-session limits on what a client may send (anything beyond gets an ``error`` event)."""

    max_audio_packet_ms: float = _opt(100, "longest mic packet accepted (20-40 ms is what the page sends)")
    audio_rate_factor: float = _opt(
        1.5, "mic audio accepted per second, as a multiple of real time (above it: rate_limited)"
    )
    audio_burst_s: float = _opt(2.0, "seconds of mic audio that may arrive at once (network jitter)")
    max_frame_bytes: int = _opt(2_000_000, "largest camera JPEG accepted, in bytes")
    max_frame_side: int = _opt(
        1920, "widest or tallest camera frame accepted, in pixels (read from the JPEG header, before any decode)"
    )
    max_frame_pixels: int = _opt(
        4_000_000, "most pixels (width x height) a camera frame may have (read from its header, before any decode)"
    )
    frame_rate_factor: float = _opt(2.0, "camera frames accepted per second, as a multiple of --camera_fps")
    max_control_per_s: float = _opt(20, "JSON control events accepted per second (burst: twice that)")
    max_text_chars: int = _opt(2000, "longest typed question, in characters")
    max_frames_kept: int = _opt(16, "camera frames a session keeps in memory for the next turn")
    max_message_bytes: int = _opt(
        16_000_000, "transport limit for one Socket.IO message; bigger ones close the connection (code 1009)"
    )
    max_errors_per_s: float = _opt(10, "error events sent to one client per second (more are only logged)")


def default_tiny_dir() -> Path:
    """Where the default run keeps its tiny random checkpoint: outside the source tree, per user."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "vita-duplex" / "tiny-ckpt"


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """How the VITA-1.5 engine runs (command line: the names below). Mapped onto ``LlmOptions`` and
    ``DuplexOptions`` by ``server.cli.load_engine``."""

    num_engines: int = _opt(2, "vLLM engine instances: 2 = generator + monitor (full duplex), 1 = shared")
    devices: str = _opt("", "comma-separated device per engine, e.g. cuda:0,cuda:1; empty = both on one GPU")
    gpu_memory_share: float = _opt(0.42, "GPU memory fraction per engine (two on one GPU stay under 0.9)")
    kv_cache_mb: int = _opt(0, "KV cache per engine in MiB (0: from --gpu_memory_share; on CPU 0 means 512)")
    max_model_len: int = _opt(8192, "context length: history + media tokens + reply")
    max_new_tokens: int = _opt(512, "longest reply in tokens")
    dtype: str = _opt("auto", "LLM dtype (auto = the checkpoint's)")
    enforce_eager: bool = _opt(False, "skip graph capture / torch.compile (faster start, slower decode)")
    awakening: str | None = _opt(
        None, "non-awakening policy: 'model' = the model's first token (☞/☟) decides whether an utterance "
        "is for the assistant (chatter is ignored and does not interrupt); 'always' = answer every utterance. "
        "Unset: 'model' with --model_path; 'always' for the random demo checkpoint, whose verdicts are noise",
        choices=["model", "always"],
    )
    no_streaming: bool = _opt(False, "generate the whole answer before speaking (the reference demo's way)")
    max_frames: int = _opt(2, "camera frames per turn, evenly spaced over the utterance")
    speech_device: str | None = _opt(None, "device of the speech head; unset = CUDA when present, else CPU")
    trust_checkpoint_pickles: bool = _opt(
        False, "unpickle the speech checkpoints (vita_tts_ckpt/*/final.pt) in full when they hold objects "
        "besides weights and training bookkeeping; pickles can run code: only for files you trust"
    )
    tiny_dir: str = _opt(str(default_tiny_dir()), "where the random tiny checkpoint is made when no --model_path")
    restart_backoff_s: float = _opt(
        1.0, "seconds before a dead vLLM engine is restarted (the other keeps serving); doubled after each "
        "failed attempt"
    )
    restart_backoff_max_s: float = _opt(30.0, "longest wait between restart attempts of a dead vLLM engine")
    restart_max_attempts: int = _opt(
        10, "consecutive failed restarts after which an engine is given up (/healthz then fails); 0 = never"
    )
    no_restart: bool = _opt(False, "leave a dead vLLM engine dead (until the server is restarted)")


@dataclass(frozen=True, slots=True)
class SecurityOptions:
    """Who may reach the server: Host names it answers to and an optional access token (docs/protocol.md)."""

    allowed_hosts: str = _opt(
        "", "comma-separated extra Host names the server answers to (besides localhost, loopbacks, --ip, this "
        "machine's names and any IP address); '.example.com' also matches subdomains; '*' accepts any Host "
        "(only behind a proxy that checks it). Other Hosts get 400: protects against DNS rebinding"
    )
    # repr=False: the token must never show up in a log line or a traceback that prints the options
    access_token: str | None = field(default=None, repr=False, metadata={"help": (
        "token the page's socket and /metrics (Authorization: Bearer) must present; unset = no token. "
        "Visible in the process list: prefer --access_token_file or $VITA_ACCESS_TOKEN")})
    access_token_file: str | None = _opt(None, "file whose first line is the access token (see --access_token)")

    def __post_init__(self) -> None:
        if self.access_token and self.access_token_file:
            raise ValueError("--access_token and --access_token_file contradict each other")


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Everything ``launch.py`` accepts. Reference names (model_path, ip, port, max_users, timeout) are kept."""

    model_path: str | None = _opt(
        None, "VITA-1.5 checkpoint folder; unset = a tiny RANDOM checkpoint (made once) to try the system"
    )
    ip: str = _opt("127.0.0.1", "address to listen on (0.0.0.0 for every interface)")
    port: int = _opt(8081, "TCP port (0 picks a free one)")
    max_users: int = _opt(2, "concurrent sessions; extra clients wait in the queue (--queue_size), then are refused")
    queue_size: int = _opt(
        10, "clients that may wait for a free session when --max_users are connected (the page shows their place "
        "in line; the first is admitted when a session ends); more are refused with a reason; 0 = no queue"
    )
    queue_timeout_s: float = _opt(
        300, "seconds a client may wait in the queue; then it is told (error queue_timeout) and disconnected"
    )
    timeout: float = _opt(600, "seconds without speech, text or reply after which a session is closed")
    cert: str | None = _opt(None, "TLS certificate (PEM) of your own; needs --key")
    key: str | None = _opt(None, "TLS private key (PEM) for --cert")
    no_tls: bool = _opt(False, "serve plain HTTP (only behind a TLS-terminating proxy: browsers need HTTPS)")
    tls_dir: str = _opt(str(default_tls_dir()), "where the self-signed certificate is made and kept")
    camera_fps: float = _opt(2.0, "camera frames per second the page sends")
    playback_lead_ms: float = _opt(
        300, "how far ahead of real time reply audio is sent (client buffer; flushed on interruption)"
    )
    record_dir: str | None = _opt(
        None, "operator opt-in: write each utterance as WAV here (nothing is written to disk without it)"
    )
    log_level: str = _opt("INFO", "logging level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    drain_s: float = _opt(
        30.0, "on SIGTERM: refuse new clients, tell connected ones (server_draining), let their replies finish "
        "for up to this many seconds, then close the sessions and exit 0 (a second SIGTERM stops at once)"
    )
    vad: VadOptions = field(default_factory=VadOptions, metadata={"group": "VAD / end of turn", "prefix": "vad_"})
    limits: LimitOptions = field(default_factory=LimitOptions, metadata={"group": "limits", "prefix": ""})
    echo: EchoOptions = field(default_factory=EchoOptions, metadata={"group": "echo guard", "prefix": "echo_"})
    engine: EngineOptions = field(default_factory=EngineOptions, metadata={"group": "engine", "prefix": ""})
    security: SecurityOptions = field(
        default_factory=SecurityOptions, metadata={"group": "security", "prefix": ""}
    )

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--cert and --key go together")
        if self.no_tls and self.cert:
            raise ValueError("--no-tls and --cert contradict each other")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be 0-65535, got {self.port}")
        if self.max_users < 1:
            raise ValueError("max_users must be at least 1")
        if self.queue_size < 0 or self.queue_timeout_s <= 0:
            raise ValueError("queue_size must be >= 0 and queue_timeout_s > 0")
        if self.drain_s < 0:
            raise ValueError("drain_s must be >= 0")
        if self.timeout <= 0 or self.camera_fps <= 0:
            raise ValueError("timeout and camera_fps must be positive")


def _flags(name: str) -> list[str]:
    """Reference spelling (underscores) plus the dashed one: ``--max_users`` and ``--max-users``."""
    dashed = name.replace("_", "-")
    return [f"--{name}"] if dashed == name else [f"--{name}", f"--{dashed}"]


_ARG_TYPES = {"float": float, "int": int, "str": str, "str | None": str}


def _add_fields(group: Any, cls: type, prefix: str) -> None:
    defaults = cls()
    for f in dataclasses.fields(cls):
        if "prefix" in f.metadata:
            continue
        default = getattr(defaults, f.name)
        dest = f"{prefix}{f.name}"
        kw: dict[str, Any] = {"dest": dest, "default": default, "help": f.metadata["help"] + " (default: %(default)s)"}
        if isinstance(default, bool):
            if default:  # an option that is on by default needs a way to turn it off: --no-<name>
                group.add_argument(*_flags(dest), action=argparse.BooleanOptionalAction, **kw)
            else:
                group.add_argument(*_flags(dest), action="store_true", **kw)
            continue
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        kw["type"] = _ARG_TYPES[str(f.type)]
        group.add_argument(*_flags(dest), **kw)


def build_parser() -> argparse.ArgumentParser:
    """The command line, generated from :class:`ServerOptions` and its nested option groups."""
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="vita-duplex: real-time full-duplex voice + vision server for VITA-1.5.",
    )
    _add_fields(parser, ServerOptions, "")
    for f in dataclasses.fields(ServerOptions):
        if "prefix" in f.metadata:
            group = parser.add_argument_group(f.metadata["group"])
            _add_fields(group, _group_class(f), f.metadata["prefix"])
    return parser


def _group_class(f: dataclasses.Field[Any]) -> type:
    """The options class of a nested group field (its default factory)."""
    factory = f.default_factory
    assert callable(factory), f.name
    return type(factory())


def parse_options(argv: list[str] | None = None) -> ServerOptions:
    """Parse the command line into :class:`ServerOptions` (argparse errors exit with usage)."""
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    nested: dict[str, Any] = {}
    try:
        for f in dataclasses.fields(ServerOptions):
            if "prefix" in f.metadata:
                cls = _group_class(f)
                p = f.metadata["prefix"]
                nested[f.name] = cls(**{g.name: ns.pop(f"{p}{g.name}") for g in dataclasses.fields(cls)})
        return ServerOptions(**ns, **nested)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
