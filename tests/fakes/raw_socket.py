"""A raw Socket.IO client over a real WebSocket (websocket-client): it sends Engine.IO / Socket.IO packets
exactly as given, malformed ones included, and tells whether the server closed the connection."""

from __future__ import annotations

import json
import ssl
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import websocket
from websocket import ABNF


def ws_url(http_url: str) -> str:
    """The Engine.IO WebSocket endpoint of a server at ``http_url``."""
    return http_url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"


@dataclass
class RawSocketIO:
    """One raw connection; ``messages`` holds every text/binary message received, in order."""

    url: str
    cafile: str | None = None
    messages: list[str | bytes] = field(default_factory=list)
    close_code: int | None = None
    closed: bool = False

    def __post_init__(self) -> None:
        sslopt: dict[str, Any] = {}
        if self.url.startswith("https"):
            sslopt = {"ca_certs": self.cafile} if self.cafile else {"cert_reqs": ssl.CERT_NONE}
        self.ws = websocket.create_connection(ws_url(self.url), timeout=10, sslopt=sslopt, enable_multithread=True)
        opened = self.ws.recv()
        assert isinstance(opened, str) and opened.startswith("0{"), opened

    # ------------------------------------------------------------------ sending

    def send(self, message: str | bytes) -> bool:
        """Send one Engine.IO message as is; False if the connection is already gone."""
        try:
            if isinstance(message, bytes):
                self.ws.send_binary(message)
            else:
                self.ws.send(message)
            return True
        except (OSError, websocket.WebSocketException):
            self.closed = True
            return False

    def connect(self, auth: dict[str, Any] | None = None, timeout: float = 10) -> bool:
        """Send the Socket.IO CONNECT and wait for its answer; True when accepted (``hello`` follows)."""
        self.send("40" + (json.dumps(auth) if auth else ""))
        reply = self.wait_for(lambda m: isinstance(m, str) and m[:2] in ("40", "44"), timeout)
        return reply is not None and reply.startswith("40")

    # ------------------------------------------------------------------ receiving

    def _read(self, timeout: float) -> str | bytes | None:
        """The next data message (answering Engine.IO pings); None on timeout or when closed."""
        if self.closed:
            return None
        self.ws.settimeout(timeout)
        try:
            opcode, frame = self.ws.recv_data_frame(control_frame=True)
        except (websocket.WebSocketTimeoutException, TimeoutError):
            return None
        except (OSError, websocket.WebSocketException):
            self.closed = True
            return None
        if opcode == ABNF.OPCODE_CLOSE:
            self.closed = True
            data = frame.data
            self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
            return None
        if opcode in (ABNF.OPCODE_PING, ABNF.OPCODE_PONG):
            return self._read(timeout)
        data = frame.data if opcode == ABNF.OPCODE_BINARY else frame.data.decode("utf-8", "replace")
        if data == "2":  # Engine.IO ping
            self.send("3")
            return self._read(timeout)
        self.messages.append(data)
        return data

    def wait_for(self, predicate: Any, timeout: float = 10) -> str | bytes | None:
        """Read until a message satisfies ``predicate``; None if the connection closed or time ran out."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self._read(min(left, 1.0))
            if msg is not None and predicate(msg):
                return msg
            if self.closed:
                return None
        return None

    def wait_event(self, name: str, timeout: float = 10) -> bool:
        """Has text event ``name`` arrived (already, or within ``timeout``)?"""
        if self.events(name):
            return True
        return self.wait_for(lambda m: bool(self.events(name)), timeout) is not None

    def wait_closed(self, timeout: float = 10) -> bool:
        """Read (and drop) until the server closes the connection; False if it is still open."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self._read(min(deadline - time.monotonic(), 1.0))
        return self.closed

    def events(self, name: str) -> list[Any]:
        """Arguments of every text Socket.IO event ``name`` received so far."""
        out = []
        for m in self.messages:
            if isinstance(m, str) and m.startswith("42["):
                try:
                    data = json.loads(m[2:])
                except ValueError:
                    continue
                if data and data[0] == name:
                    out.append(data[1:])
        return out

    def works(self, timeout: float = 10, ack_id: int = 9000) -> bool:
        """Does the server still answer a ``ping`` control (ack) on this connection?"""
        if not self.send(f'42{ack_id}["control",{{"type":"ping"}}]'):
            return False
        return self.wait_for(lambda m: isinstance(m, str) and m.startswith(f"43{ack_id}"), timeout) is not None

    def close(self) -> None:
        """Close from this side (idempotent, never raises)."""
        self.closed = True
        try:
            self.ws.close(timeout=0.2)
        except Exception:  # noqa: BLE001 - the server may have closed it already
            pass


def masked_frame_header(opcode: int, length: int, mask: bytes = b"\0\0\0\0") -> bytes:
    """A client WebSocket frame header announcing ``length`` payload bytes (FIN set, masked).

    With the zero mask the payload goes on the wire as is, so a client can stream it without holding it."""
    first = 0x80 | opcode
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + mask


def stream_oversize(conn: RawSocketIO, total: int, chunk: int = 1 << 16, opcode: int = ABNF.OPCODE_BINARY) -> int:
    """Announce one message of ``total`` bytes and stream zeros until the server stops taking them.

    Returns the bytes written; the connection is then read for the server's close."""
    sock = conn.ws.sock
    sent = 0
    try:
        sock.sendall(masked_frame_header(opcode, total))
        zeros = bytes(chunk)
        sock.settimeout(10)
        while sent < total:
            sock.sendall(zeros[: min(chunk, total - sent)])
            sent += min(chunk, total - sent)
    except OSError:
        pass
    return sent
