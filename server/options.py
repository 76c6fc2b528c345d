"""Every server option, typed, with its default and help text in one place.

:class:`ServerOptions` nests the engine's own option classes (``LlmOptions``, ``DuplexOptions``,
``SupervisionOptions``): each value is defined once, where it is used. ``launch.py --help``, the
``--config`` TOML file and the ``VITA_*`` environment variables are generated from these dataclasses
(``server.config``), so they can never disagree.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.duplex.options import DuplexOptions
from engine.llm.options import LlmOptions, SupervisionOptions
from server.config import Option, add_arguments, build, dump_toml, merge, options_by_name, read_env, read_toml
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
    connect_timeout_s: float = _opt(
        10.0, "seconds a new connection has to send its Socket.IO CONNECT; then it is closed (idle sockets hold threads)"
    )


def default_tiny_dir() -> Path:
    """Where the default run keeps its tiny random checkpoint: outside the source tree, per user."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "vita-duplex" / "tiny-ckpt"


@dataclass(frozen=True, slots=True)
class SecurityOptions:
    """Who may reach the server: Host names it answers to and an optional access token (docs/protocol.md)."""

    allowed_hosts: str = _opt(
        "", "comma-separated extra Host names the server answers to (besides localhost, loopbacks, --ip, this "
        "machine's names and any IP address); '.example.com' also matches subdomains; '*' accepts any Host "
        "(only behind a proxy that checks it). Other Hosts get 400: protects against DNS rebinding"
    )
    # repr=False: the token must never show up in a log line or a traceback that prints the options
    access_token: str | None = field(default=None, repr=False, metadata={"secret": True, "excludes": "access_token_file",
        "help": "token the page's socket and /metrics (Authorization: Bearer) must present; unset = no token. "
                "Visible in the process list: prefer --access_token_file or $VITA_ACCESS_TOKEN"})
    access_token_file: str | None = _opt(
        None, "file whose first line is the access token (see --access_token)", excludes="access_token"
    )

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
    tiny_dir: str = _opt(str(default_tiny_dir()), "where the random tiny checkpoint is made when no --model_path")
    drain_s: float = _opt(
        30.0, "on SIGTERM: refuse new clients, tell connected ones (server_draining), let their replies finish "
        "for up to this many seconds, then close the sessions and exit 0 (a second SIGTERM stops at once)"
    )
    vad: VadOptions = field(default_factory=VadOptions, metadata={"group": "VAD / end of turn", "prefix": "vad_"})
    limits: LimitOptions = field(default_factory=LimitOptions, metadata={"group": "limits", "prefix": ""})
    echo: EchoOptions = field(default_factory=EchoOptions, metadata={"group": "echo guard", "prefix": "echo_"})
    llm: LlmOptions = field(default_factory=LlmOptions, metadata={"group": "LLM (vLLM engines)", "prefix": ""})
    duplex: DuplexOptions = field(
        default_factory=DuplexOptions, metadata={"group": "duplex turns and speech", "prefix": ""}
    )
    restart: SupervisionOptions = field(
        default_factory=SupervisionOptions, metadata={"group": "engine restarts", "prefix": "restart_"}
    )
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


def _table() -> dict[str, Option]:
    return options_by_name(ServerOptions)


def build_parser() -> argparse.ArgumentParser:
    """The command line, generated from :class:`ServerOptions` and the option groups nested in it."""
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="vita-duplex: real-time full-duplex voice + vision server for VITA-1.5. Every option can "
        "also be set in a TOML file (--config, keys = the option names) or as $VITA_<NAME>; precedence: "
        "command line > environment > config file > defaults.",
    )
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="TOML file of options (flat keys named as below, e.g. max_users = 4) (default: none)")
    parser.add_argument("--print-config", "--print_config", dest="print_config", action="store_true",
                        default=argparse.SUPPRESS,
                        help="print the effective configuration as TOML (secrets masked) and exit (default: off)")
    add_arguments(parser, _table())
    return parser


@dataclass(frozen=True, slots=True)
class CommandLine:
    """What ``launch.py`` was asked to do."""

    options: ServerOptions
    print_config: bool = False


def parse_command_line(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> CommandLine:
    """Options from the command line, ``$VITA_*`` and ``--config`` (in that precedence); errors exit with
    usage and status 2, naming the option and where it came from."""
    parser = build_parser()
    table = _table()
    given = vars(parser.parse_args(argv))
    config, show = given.pop("config", None), bool(given.pop("print_config", False))
    try:
        from_file = read_toml(config, table) if config else {}
        from_env = read_env(os.environ if environ is None else environ, table)
        options = build(ServerOptions, merge([from_file, from_env, given], table), table)
    except ValueError as exc:  # ConfigError included: both name what was wrong
        parser.error(str(exc))
    return CommandLine(options, show)


def parse_options(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> ServerOptions:
    """:func:`parse_command_line`'s options."""
    return parse_command_line(argv, environ).options


def print_config(options: ServerOptions) -> str:
    """The effective configuration as TOML, loadable with ``--config``; the access token is masked."""
    return dump_toml(options, _table())
