"""The wire protocol (see docs/protocol.md): event names, inbound validation, outbound messages.

Everything a client sends is validated here, once, into typed values; anything else raises
:class:`ProtocolError`, which the session turns into an ``error`` event for that client only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

# Client -> server
EV_AUDIO = "audio"  # binary: PCM16 LE mono 16 kHz
EV_FRAME = "frame"  # binary: one JPEG
EV_CONTROL = "control"  # JSON object with a "type"
CLIENT_EVENTS = (EV_AUDIO, EV_FRAME, EV_CONTROL)
"""The only event names a client may send; any other is answered with ``bad_type`` and ignored."""
RESERVED_EVENTS = frozenset({"connect", "disconnect", "connect_error", "message", "error", "*", "ping", "pong",
                             "reconnect", "newListener", "removeListener"})
"""Names the Socket.IO libraries give a meaning of their own (lifecycle, catch-all, ...): a client event
with one of them is refused like an unknown one (its error says "reserved")."""
# Server -> client
EV_HELLO = "hello"
EV_VAD = "vad"
EV_REPLY_START = "reply_start"
EV_REPLY_TEXT = "reply_text"
EV_REPLY_AUDIO = "reply_audio"  # two arguments: header object, then binary PCM16 LE mono 24 kHz
EV_REPLY_END = "reply_end"
EV_INTERRUPT = "interrupt"
EV_PAUSE = "pause"  # speech started over the reply: stop playing, keep the buffer
EV_RESUME = "resume"  # that speech was not a query: play on from where it paused
EV_JUDGEMENT = "judgement"  # an utterance got no reply (not addressed, too short, echo, failed)
EV_ERROR = "error"
EV_SERVER_DRAINING = "server_draining"  # the server is shutting down: finish up, you will be disconnected
EV_WAITING = "waiting"  # the server is full: this client waits in line (server/waiting_room.py); hello = admitted

ErrorCode = Literal[
    "bad_type",  # payload of the wrong kind (e.g. text where bytes were expected)
    "bad_audio",  # odd byte count, empty or over-long packet
    "bad_frame",  # not a JPEG, too many bytes, or too many pixels (from its header)
    "bad_control",  # malformed control event
    "not_started",  # audio/frames before "start" or after "stop"
    "rate_limited",  # more than the per-session rate allows; the excess is dropped
    "idle_timeout",  # nothing happened for --timeout seconds; the session is closed
    "engine",  # the engine failed on this turn (or is down, when fatal)
    "internal",  # a bug on the server; the session goes on where it can
    "bad_packet",  # (fatal) a Socket.IO packet that breaks the protocol; the connection is closed
    "queue_timeout",  # (fatal) waited --queue_timeout_s in the waiting room without a free session
]


class ProtocolError(ValueError):
    """Bad input from a client: ``code`` is stable for programs, ``message`` is for people."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message


MAX_ECHOED_CHARS = 100


def cut(value: object, limit: int = MAX_ECHOED_CHARS) -> str:
    """``value`` as text of at most ``limit`` characters: client strings echoed back or logged."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _as_bytes(data: Any, what: str) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise ProtocolError("bad_type", f"{what} must be a binary message, got {type(data).__name__}")


def parse_audio(data: Any, max_bytes: int) -> np.ndarray:
    """One mic packet -> int16 samples; PCM16 little-endian mono at 16 kHz, 1..``max_bytes`` bytes."""
    raw = _as_bytes(data, "audio")
    if not raw:
        raise ProtocolError("bad_audio", "audio packet is empty")
    if len(raw) % 2:
        raise ProtocolError("bad_audio", f"audio packet has {len(raw)} bytes; PCM16 needs an even count")
    if len(raw) > max_bytes:
        raise ProtocolError(
            "bad_audio", f"audio packet of {len(raw)} bytes exceeds {max_bytes} (send 20-40 ms packets)"
        )
    return np.frombuffer(raw, dtype="<i2").astype(np.int16)


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field


def jpeg_dimensions(buf: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's start-of-frame header, walking markers without decoding pixels.

    Walks every segment up to the first scan: a second frame header is refused, since decoders differ on
    which one they believe (Pillow takes the last), and the size checked must be the size decoded."""
    if buf[:3] != b"\xff\xd8\xff":
        raise ProtocolError("bad_frame", "camera frame is not a JPEG (no FF D8 FF signature)")
    size: tuple[int, int] | None = None
    i = 2
    while i + 4 <= len(buf):
        if buf[i] != 0xFF:
            raise ProtocolError("bad_frame", "camera frame is a corrupt JPEG (bad marker)")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE_MARKERS:
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan (or end of image): every frame header is behind us
            break
        seg_len = int.from_bytes(buf[i + 2 : i + 4], "big")
        if marker == 0x00 or marker == 0xD8 or seg_len < 2:
            raise ProtocolError("bad_frame", "camera frame is a corrupt JPEG (bad segment)")
        if marker in _SOF_MARKERS:
            if size is not None:
                raise ProtocolError("bad_frame", "camera frame is a corrupt JPEG (two frame headers)")
            if i + 9 > len(buf):
                break
            height = int.from_bytes(buf[i + 5 : i + 7], "big")
            width = int.from_bytes(buf[i + 7 : i + 9], "big")
            if not (width and height):
                raise ProtocolError("bad_frame", "camera frame has a zero width or height in its header")
            size = (width, height)
        i += 2 + seg_len
    if size is None:
        raise ProtocolError("bad_frame", "camera frame is a truncated JPEG (no frame header)")
    return size


def parse_frame(
    data: Any, max_bytes: int, max_side: int | None = None, max_pixels: int | None = None
) -> tuple[bytes, int, int]:
    """One camera frame -> (jpeg bytes, width, height).

    Rejects non-JPEG data, more than ``max_bytes`` bytes, and (from the header alone, before anything
    decodes it) a side over ``max_side`` or more than ``max_pixels`` pixels: a small JPEG can declare a
    huge image (9000x9000 in 950 KB) whose decode costs hundreds of MB."""
    raw = _as_bytes(data, "frame")
    if len(raw) > max_bytes:
        raise ProtocolError("bad_frame", f"camera frame of {len(raw)} bytes exceeds {max_bytes}")
    width, height = jpeg_dimensions(raw)
    if max_side is not None and max(width, height) > max_side:
        raise ProtocolError("bad_frame", f"camera frame of {width}x{height} exceeds {max_side} pixels a side")
    if max_pixels is not None and width * height > max_pixels:
        raise ProtocolError(
            "bad_frame", f"camera frame of {width}x{height} = {width * height} pixels exceeds {max_pixels}"
        )
    return raw, width, height


@dataclass(frozen=True, slots=True)
class SimpleControl:
    """A control without fields.

    ``start``: begin listening (mic and camera accepted from now on); ``stop``: stop listening and
    silence any reply; ``reset``: silence any reply and forget the history; ``ping``: acknowledged at once.
    """

    type: Literal["start", "stop", "reset", "ping"]


@dataclass(frozen=True, slots=True)
class TextControl:
    """A typed question (answered like an utterance, with the latest camera frames)."""

    text: str
    type: Literal["text"] = "text"

    def __repr__(self) -> str:
        return f"TextControl({len(self.text)} chars)"


@dataclass(frozen=True, slots=True)
class PlaybackControl:
    """The client has played ``samples`` samples (24 kHz) of reply ``reply_id``."""

    reply_id: str
    samples: int
    type: Literal["playback"] = "playback"


Control = SimpleControl | TextControl | PlaybackControl
_SIMPLE: dict[str, SimpleControl] = {k: SimpleControl(k) for k in ("start", "stop", "reset", "ping")}


def parse_control(data: Any, max_text_chars: int) -> Control:
    """A JSON control event -> its dataclass; unknown types and bad fields raise ``bad_control``."""
    if not isinstance(data, dict):
        raise ProtocolError("bad_type", f"control must be a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_control", f"control 'type' must be a string, got {type(kind).__name__}")
    if kind in _SIMPLE:
        return _SIMPLE[kind]
    if kind == "text":
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ProtocolError("bad_control", "text control needs a non-empty string 'text'")
        if len(text) > max_text_chars:
            raise ProtocolError("bad_control", f"text of {len(text)} characters exceeds {max_text_chars}")
        return TextControl(text=text.strip())
    if kind == "playback":
        reply_id, samples = data.get("reply_id"), data.get("samples")
        if not isinstance(reply_id, str) or not reply_id or len(reply_id) > 64:
            raise ProtocolError("bad_control", "playback control needs a string 'reply_id'")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise ProtocolError("bad_control", "playback control needs a non-negative integer 'samples'")
        return PlaybackControl(reply_id=reply_id, samples=samples)
    known = ", ".join([*_SIMPLE, "text", "playback"])
    raise ProtocolError("bad_control", f"unknown control type {cut(kind)!r} (known: {known})")


# ---------------------------------------------------------------- server -> client messages


@dataclass(frozen=True, slots=True)
class Outbound:
    """Base of server -> client JSON messages."""

    def to_wire(self) -> dict[str, Any]:
        """The JSON object sent on the socket."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class HelloMsg(Outbound):
    """Sent on connect: what the client must send, and how."""

    session: str
    mic_sample_rate: int
    reply_sample_rate: int
    camera_fps: float
    max_audio_packet_bytes: int
    max_frame_bytes: int
    max_frame_side: int
    max_frame_pixels: int
    notice: str | None = None
    """A line to show every user (e.g. that the weights are random), or ``None``."""


@dataclass(frozen=True, slots=True)
class VadMsg(Outbound):
    """Speech started (``speech_start``) or the user's turn ended (``speech_end``); times in ms of mic audio."""

    type: Literal["speech_start", "speech_end"]
    start_ms: float
    end_ms: float | None
    at_ms: float


@dataclass(frozen=True, slots=True)
class ReplyStartMsg(Outbound):
    """A reply begins; every later reply event carries the same id and epoch."""

    reply_id: str
    epoch: int
    source: Literal["voice", "text"]


@dataclass(frozen=True, slots=True)
class ReplyTextMsg(Outbound):
    """New reply text."""

    reply_id: str
    epoch: int
    text: str


@dataclass(frozen=True, slots=True)
class ReplyAudioHeader(Outbound):
    """First argument of ``reply_audio``; the second is the PCM16 bytes."""

    reply_id: str
    epoch: int
    seq: int
    samples: int


@dataclass(frozen=True, slots=True)
class ReplyEndMsg(Outbound):
    """The reply is over; ``timings_ms`` holds the turn's latencies (server and engine)."""

    reply_id: str
    epoch: int
    reason: str
    timings_ms: dict[str, float]


@dataclass(frozen=True, slots=True)
class InterruptMsg(Outbound):
    """Flush all queued reply audio now; the new epoch is ``epoch`` (older chunks are stale)."""

    epoch: int
    reply_id: str | None
    reason: Literal["barge_in", "text", "stop", "reset"]


@dataclass(frozen=True, slots=True)
class PauseMsg(Outbound):
    """``pause``: stop playing reply ``reply_id`` now and keep what is buffered; ``resume``: play on."""

    reply_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class JudgementMsg(Outbound):
    """An utterance that gets no reply, and why: ``state_token`` (the model judged it not addressed, ☟),
    ``too_short``, ``echo`` (the echo guard took it for the assistant's own voice) or ``error``."""

    reply_id: str | None
    addressed: bool
    why: str
    timings_ms: dict[str, float]


@dataclass(frozen=True, slots=True)
class ErrorMsg(Outbound):
    """Something the client sent (or the engine) failed; ``fatal`` means the session is closing."""

    code: str
    message: str
    fatal: bool = False


@dataclass(frozen=True, slots=True)
class ServerDrainingMsg(Outbound):
    """The server is shutting down (SIGTERM): it takes no new session; a reply in flight may finish
    within ``seconds_left`` seconds, then the server disconnects this client. Reconnect later."""

    seconds_left: float
    reason: Literal["shutdown"] = "shutdown"


@dataclass(frozen=True, slots=True)
class WaitingMsg(Outbound):
    """``waiting``: every session is taken; this client is number ``position`` (1 = next) of ``waiting`` in
    line. Sent on connect and whenever the place or estimate changes; ``hello`` follows on admission."""

    position: int
    waiting: int
    estimated_wait_s: float | None
    """Seconds until admission, estimated from recent session lengths (server/waiting_room.py); ``None``
    while unknown."""
    timeout_s: float
    """Seconds after joining when the server gives up (error ``queue_timeout``)."""
