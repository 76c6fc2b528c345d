"""The packet guard: every Engine.IO message a client sends is checked before python-socketio acts on it.

python-socketio trusts its clients more than a public server can:

* an *event* named ``connect`` (or ``disconnect``) runs the connect (disconnect) handler, so one connection
  could open a hundred sessions or close its own and keep the socket;
* a binary event whose placeholder points past its attachments raises while the packet is rebuilt, and
  the half-built packet stays registered: every later message of that connection failed with
  ``Unexpected binary attachment`` and the connection was stuck for good;
* any packet it cannot decode raises into Engine.IO, which logs a traceback (twice: its logger has its own
  handler and also propagates) and goes on, once per message.

So the guard sits in python-socketio's place as Engine.IO's ``message`` handler and lets a message through
only when the library will handle it without raising: one ``CONNECT`` at a time, events shaped
``[name, ...args]`` on the one namespace served, binary events whose placeholders all fit, attachments
that are binary and fit ``max_bytes`` together. Event names other than ``events`` never reach a handler:
the app answers them (``on_bad_event``: an ``error`` event ``bad_type``). Anything else is a
:class:`Violation`: counted, told to the app (``on_violation``: a fatal ``error`` event, logged once),
and the connection is closed. Messages that arrive after that are dropped silently.

The guard also closes the transport after a client's ``DISCONNECT`` (the server serves one namespace, so
the connection has nothing left to carry), closes a connection that has not connected to the namespace
within ``connect_timeout_s`` (an Engine.IO connection that never sends ``CONNECT``, or stays after a
refused one, answers pings forever and holds two threads: python-socketio sets no such deadline), and
serialises the messages of one connection (long-polling
POSTs may arrive on several threads at once).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from socketio import packet as sio

from server.ratelimit import TokenBucket
from server.transport_limits import bound_websockets

log = logging.getLogger(__name__)

MAX_ATTACHMENTS = 4
"""Binary attachments one event may announce (``audio`` and ``frame`` carry one)."""
MAX_BINARY_DEPTH = 32
"""Nesting depth of a binary event's arguments: python-socketio rebuilds them recursively."""
NAMESPACE = "/"


@dataclass(frozen=True, slots=True)
class Violation:
    """A message that breaks the protocol; ``kind`` is a stable label, ``detail`` never holds the payload."""

    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class BadEvent:
    """A well-formed event with a name no handler may see (reserved, like ``connect``, or unknown)."""

    name: str
    ack_id: int | None


@dataclass(slots=True)
class _Connection:
    """What the guard knows of one Engine.IO connection."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False
    attachments_due: int = 0
    attachment_bytes: int = 0
    held: BadEvent | None = None  # a refused binary event whose attachments are being swallowed
    deadline: threading.Timer | None = None  # closes the connection unless it connects to the namespace first


class _Malformed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.violation = Violation(kind, detail)


_DISPATCH, _DROP, _DISCONNECT = "dispatch", "drop", "disconnect"


class RateLimitedLog:
    """Log lines through a shared token bucket; the lines it holds back are counted in the next one."""

    def __init__(self, logger: logging.Logger, per_s: float = 5.0, burst: float = 20.0) -> None:
        self._log = logger
        self._bucket = TokenBucket(per_s, burst)
        self._lock = threading.Lock()
        self._held = 0

    def warning(self, msg: str, *args: Any) -> None:
        """``logger.warning`` unless over the rate."""
        with self._lock:
            if not self._bucket.take():
                self._held += 1
                return
            held, self._held = self._held, 0
        self._log.warning(msg + (f" ({held} similar lines held back)" if held else ""), *args)


class PacketGuard:
    """Checks each client message before python-socketio dispatches it (see the module docstring)."""

    def __init__(
        self,
        server: Any,
        events: Collection[str],
        max_bytes: int,
        on_bad_event: Callable[[str, BadEvent], None],
        on_violation: Callable[[str, Violation], bool],
        connect_timeout_s: float = 10.0,
    ) -> None:
        """``server``: a ``socketio.Server``; ``on_violation(eio_sid, v)`` returns whether it told (and
        logged to) a session, otherwise the guard logs the violation itself."""
        self.server = server
        self.events = frozenset(events)
        self.max_bytes = max_bytes
        self.on_bad_event = on_bad_event
        self.on_violation = on_violation
        self.connect_timeout_s = connect_timeout_s
        self.counts: Counter[str] = Counter()
        """Violations (connections closed) by kind."""
        self.bad_event_names = 0
        """Events refused for their name (answered with ``bad_type``; the connection goes on)."""
        self._conns: dict[str, _Connection] = {}
        self._lock = threading.Lock()
        self._log = RateLimitedLog(log)
        self._dispatch: Callable[[str, Any], None] = server._handle_eio_message
        self._eio_connect: Callable[..., Any] = server._handle_eio_connect
        self._eio_disconnect: Callable[..., Any] = server._handle_eio_disconnect

    def install(self) -> PacketGuard:
        """Take python-socketio's place as Engine.IO's ``message`` handler; bound the WebSocket transport."""
        eio = self.server.eio
        eio.on("connect", self._on_eio_connect)
        eio.on("message", self._on_message)
        eio.on("disconnect", self._on_eio_disconnect)
        bound_websockets(eio, self.max_bytes, self.transport_violation)
        return self

    # ------------------------------------------------------------------ Engine.IO events

    def _on_message(self, eio_sid: str, data: Any) -> None:
        with self._lock:
            conn = self._conns.get(eio_sid)
        sock = self.server.eio.sockets.get(eio_sid)
        if conn is None or sock is None or sock.closing or sock.closed:
            return  # what a closed connection still delivers is not looked at, logged or answered
        with conn.lock:
            if conn.closed:
                return
            try:
                verdict = self._check(eio_sid, conn, data)
            except _Malformed as bad:
                self._reject(eio_sid, conn, bad.violation)
                return
            if isinstance(verdict, BadEvent):
                with self._lock:
                    self.bad_event_names += 1
                self.on_bad_event(eio_sid, verdict)
                return
            if verdict == _DROP:
                return
            try:
                self._dispatch(eio_sid, data)
            except Exception:  # a bug (the message was checked): close this connection, keep the server
                log.exception("connection %s: handling a checked message failed", eio_sid)
                self._reject(eio_sid, conn, Violation("internal", "the server failed on this message"))
                return
            if conn.deadline is not None and self._connected(eio_sid):
                conn.deadline.cancel()
                conn.deadline = None
        if verdict == _DISCONNECT:
            self.close_transport(eio_sid)

    def _on_eio_connect(self, eio_sid: str, environ: Any) -> Any:
        conn = _Connection()
        conn.deadline = threading.Timer(self.connect_timeout_s, self._connect_overdue, (eio_sid,))
        conn.deadline.name, conn.deadline.daemon = "connect-deadline", True
        with self._lock:
            self._conns[eio_sid] = conn
        conn.deadline.start()
        return self._eio_connect(eio_sid, environ)

    def _on_eio_disconnect(self, eio_sid: str, reason: Any = None) -> None:
        try:
            self._eio_disconnect(eio_sid, reason)
        finally:
            with self._lock:
                conn = self._conns.pop(eio_sid, None)
            if conn is not None and conn.deadline is not None:
                conn.deadline.cancel()

    def _connect_overdue(self, eio_sid: str) -> None:
        """The connection's CONNECT deadline passed: close it unless it has a session by now."""
        with self._lock:
            conn = self._conns.get(eio_sid)
        if conn is None or self._connected(eio_sid):
            return
        with conn.lock:
            if conn.closed:
                return
            conn.closed = True
        self._count("connect_timeout")
        self._log.warning("connection %s: no Socket.IO CONNECT within %g s; closing it", eio_sid,
                          self.connect_timeout_s)
        self.close_transport(eio_sid)

    # ------------------------------------------------------------------ checks

    def _check(self, eio_sid: str, conn: _Connection, data: Any) -> str | BadEvent:
        if conn.attachments_due:
            return self._attachment(conn, data)
        if isinstance(data, bytes):
            raise _Malformed("stray_binary", "a binary message that no packet announced")
        if not isinstance(data, str):  # Engine.IO decoded a JSON value (``4true``): no Socket.IO packet
            raise _Malformed("undecodable", "an Engine.IO message that holds no Socket.IO packet")
        try:
            pkt = self.server.packet_class(encoded_packet=data)
        except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the packet is malformed
            raise _Malformed("undecodable", f"an undecodable Socket.IO packet ({type(exc).__name__})") from None
        if (pkt.namespace or NAMESPACE) != NAMESPACE:
            raise _Malformed("namespace", "a packet for a namespace this server does not serve")
        kind = pkt.packet_type
        if kind == sio.CONNECT:
            if self._connected(eio_sid):
                raise _Malformed("second_connect", "a second CONNECT on a connection that has a session")
            return _DISPATCH
        if kind == sio.DISCONNECT:
            return _DISCONNECT
        if kind not in (sio.EVENT, sio.BINARY_EVENT):
            name = sio.packet_names[kind] if isinstance(kind, int) and 0 <= kind < len(sio.packet_names) else kind
            raise _Malformed("unexpected_type", f"a packet of type {name} (clients send CONNECT, DISCONNECT, EVENT)")
        if not self._connected(eio_sid):
            raise _Malformed("not_connected", "an event on a connection without a session")
        args = pkt.data
        if not (isinstance(args, list) and args and isinstance(args[0], str)):
            raise _Malformed("bad_event", "an event that is not a list [name, ...arguments]")
        if kind == sio.BINARY_EVENT:
            count = pkt.attachment_count
            if not 1 <= count <= MAX_ATTACHMENTS:
                raise _Malformed("attachments", f"a binary event announcing {count} attachments (1-{MAX_ATTACHMENTS})")
            if why := _placeholder_error(args, count):
                raise _Malformed("placeholder", why)
            conn.attachments_due, conn.attachment_bytes = count, 0
        if args[0] in self.events:
            return _DISPATCH
        bad = BadEvent(args[0], pkt.id)
        if kind == sio.BINARY_EVENT:
            conn.held = bad  # answered once its attachments are in, so none of them is read as a packet
            return _DROP
        return bad

    def _attachment(self, conn: _Connection, data: Any) -> str | BadEvent:
        if not isinstance(data, bytes):
            raise _Malformed("text_attachment", "a text message where a binary attachment was due")
        conn.attachment_bytes += len(data)
        if conn.attachment_bytes > self.max_bytes:
            raise _Malformed("attachments_too_big", f"attachments of one event over {self.max_bytes} bytes")
        conn.attachments_due -= 1
        if conn.held is None:
            return _DISPATCH
        if conn.attachments_due:
            return _DROP
        held, conn.held = conn.held, None
        return held

    def _connected(self, eio_sid: str) -> bool:
        manager = self.server.manager
        sid = manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        return sid is not None and manager.is_connected(sid, NAMESPACE)

    # ------------------------------------------------------------------ violations and closing

    def _reject(self, eio_sid: str, conn: _Connection, v: Violation) -> None:
        conn.closed = True
        self.server._binary_packet.pop(eio_sid, None)  # never leave a half-built packet behind
        self._count(v.kind)
        told = False
        try:
            told = self.on_violation(eio_sid, v)
        except Exception:  # the connection is closed below either way
            log.exception("connection %s: reporting a violation failed", eio_sid)
        if not told:
            self._log.warning("connection %s: %s; closing it", eio_sid, v.detail)
        self.close_transport(eio_sid)

    def transport_violation(self, eio_sid: str | None, kind: str, detail: str) -> None:
        """A violation found by the WebSocket transport itself (which closes the connection): count, log."""
        self._count(kind)
        self._log.warning("connection %s: %s; closing it", eio_sid, detail)

    def close_transport(self, eio_sid: str) -> None:
        """Close one Engine.IO connection without waiting for its queue to drain (a client that stops
        reading must not hold the caller); the disconnect handlers run now, in this thread."""
        sock = self.server.eio.sockets.get(eio_sid)
        if sock is not None and not sock.closed:
            sock.close(wait=False, abort=False, reason=self.server.eio.reason.SERVER_DISCONNECT)

    # ------------------------------------------------------------------ bookkeeping

    def _count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def stats(self) -> dict[str, Any]:
        """Violations by kind and refused event names since start, and connections tracked now."""
        with self._lock:
            return {"violations": dict(self.counts), "bad_event_names": self.bad_event_names,
                    "connections": len(self._conns)}


def _placeholder_error(args: list[Any], count: int) -> str | None:
    """Why python-socketio could not rebuild ``args`` from ``count`` attachments, or ``None``.

    Mirrors its test for a placeholder (a dict with a truthy ``_placeholder`` and a ``num``), iteratively."""
    stack: list[tuple[Any, int]] = [(args, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_BINARY_DEPTH:
            return f"binary event arguments nested deeper than {MAX_BINARY_DEPTH}"
        if isinstance(item, dict):
            if item.get("_placeholder") and "num" in item:
                num = item["num"]
                if isinstance(num, bool) or not isinstance(num, int) or not 0 <= num < count:
                    return f"a binary placeholder that is not an attachment index 0-{count - 1}"
                continue
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return None


class _QuietLibraryLog(logging.Filter):
    """python-socketio / python-engineio log lines: one line each (no traceback), at a bounded rate; an
    exception they caught stays an ERROR, their other "errors" (a client's bad request) are warnings."""

    def __init__(self, per_s: float = 5.0, burst: float = 20.0) -> None:
        super().__init__()
        self._bucket = TokenBucket(per_s, burst)
        self._lock = threading.Lock()
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            if not self._bucket.take():
                self._held += 1
                return False
            held, self._held = self._held, 0
        if record.levelno >= logging.ERROR and not record.exc_info:
            # Engine.IO's "log once" lines (bad transport, origin, session id) are about a client's request
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {str(exc)[:120]}"
            record.args = None
            record.exc_info = record.exc_text = None
        if held:
            record.msg, record.args = f"{record.getMessage()} ({held} similar lines held back)", None
        return True


def library_logger(name: str) -> logging.Logger:
    """The logger to hand python-socketio / python-engineio (``logger=``, ``engineio_logger=``).

    Given a logger object they add no handler of their own (their default loggers print every line a
    second time), and this one keeps warnings and errors only, each on one line, at a bounded rate."""
    logger = logging.getLogger(f"server.lib.{name}")
    if not any(isinstance(f, _QuietLibraryLog) for f in logger.filters):
        logger.setLevel(logging.WARNING)
        logger.addFilter(_QuietLibraryLog())
    return logger

