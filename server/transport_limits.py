"""The WebSocket transport under Engine.IO, bounded: size limit while a message arrives, framing check, real close.

python-engineio's threading driver builds its ``simple_websocket.Server`` without a ``max_message_size``, so a
message is buffered whole (a 200 MB message cost 368 MB) before Engine.IO compares it with
``max_http_buffer_size``. :class:`BoundedWebSocket` passes the limit down: simple-websocket counts each
frame fragment as wsproto hands it over (after inflating, so compression bombs count at full size) and
closes with 1009 as soon as the message passes the limit; memory stays about the limit.

It also checks each text message's Engine.IO framing the way ``engineio.packet.Packet`` decodes it, because
Engine.IO decodes outside its own ``try`` (an empty text message, ``x``, a bad base64 ``b…`` payload or
JSON nested past the recursion limit used to end the handler with a traceback and leave the connection
half-open): such a message closes the connection with 1002.

And a connection ends cleanly and for good. simple-websocket's ``close`` sends the close frame but wakes
neither the Engine.IO reader waiting for the next message nor its own thread blocked in ``recv``. Here the
reader is woken at once; the connection's thread keeps reading (and discarding) until the client answers
with its own close frame, and the request thread waits for that (:data:`LINGER_S` at most) before the socket
is closed: closing with the client's packets still unread is a TCP reset, which can destroy the close
frame and the fatal ``error`` sent just before it. A client that never answers is cut after that wait
(before the close, Engine.IO's ping timeout ends a silent one). The socket stays in blocking mode: with a
timeout, OpenSSL runs non-blocking, and its reads and writes from two threads (simple-websocket's reader,
Engine.IO's writer) then share error state, which broke a TLS stream now and then under the fuzz.

The server speaks WebSocket only (what the page asks for, and what docs/protocol.md promises): Engine.IO's
long-polling POST path waits, with the request thread, for the next poll whenever it closes a session
(``disconnect`` joins the send queue), so one oversized POST held a server thread for good; it also lets
several POSTs of one connection run at once. A polling request gets 400 before any body is read (Werkzeug
then discards the body in bounded reads).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import engineio.packet
import simple_websocket
from engineio.async_drivers._websocket_wsgi import SimpleWebSocketWSGI
from wsproto.frame_protocol import CloseReason

LINGER_S = 2.0
"""How long a closing connection waits for the client's close frame before the socket is cut."""

TransportReport = Callable[[str | None, str, str], None]
"""``report(eio_sid, kind, detail)``: a transport-level violation, for the count and the log."""


def eio_framing_error(message: str) -> str | None:
    """Why Engine.IO could not decode this text message, or ``None`` if it can."""
    if not message:
        return "an empty text message"
    if not ("0" <= message[0] <= "9" or message[0] == "b"):
        return "a text message that does not start with an Engine.IO packet type"
    try:
        engineio.packet.Packet(encoded_packet=message)  # the very decode Engine.IO runs next
    except Exception as exc:  # noqa: BLE001 - anything it raises would escape Engine.IO's reader loop
        return f"an undecodable Engine.IO packet ({type(exc).__name__})"
    return None


class _LeftOpen:
    """The connection's socket as simple-websocket sees it: all of it but ``close``.

    simple-websocket's thread closes the socket as it ends (after the client's close frame, or a message
    over the limit) while Engine.IO's writer may still be sending on it. The freed descriptor number then
    goes to the next connection, and a TLS write in flight, which OpenSSL makes by number, lands in that
    connection: the next client saw its TLS stream broken. Closing is left to the request thread, which
    Werkzeug runs to its end only after Engine.IO's writer and this thread are done."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def close(self) -> None:
        """Left to the request thread (see the class docstring)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _ServerSide(simple_websocket.Server):
    """simple-websocket's server side, closing as the module docstring says.

    Two gaps of the original are closed too: when a message passes ``max_message_size`` (or wsproto
    refuses a frame) it wakes the reader *before* marking the connection closed, so a reader waking in
    between waited again for good; and a message arriving after the server's close frame marked the
    connection open again."""

    local_closed = False

    def close(self, reason: Any = None, message: Any = None) -> None:
        """Send the close frame; from now on nothing received is delivered."""
        self.local_closed = True
        super().close(reason, message)
        self.event.set()

    def receive(self, timeout: float | None = None) -> Any:
        """The next message; ``ConnectionClosed`` once either side closed (``None`` on timeout)."""
        while self.connected and not self.local_closed and not self.input_buffer:
            if not self.event.wait(timeout=timeout):
                return None
            self.event.clear()
        if self.local_closed or not self.input_buffer:
            raise simple_websocket.ConnectionClosed(self.close_reason, self.close_message)
        return self.input_buffer.pop(0)

    def _handle_events(self) -> bool:
        keep_going = super()._handle_events()
        if self.local_closed:
            self.input_buffer.clear()  # read until the client's close frame, keep nothing
        if not keep_going:
            self.connected = False
            self.event.set()
        return keep_going

    def end(self, linger_s: float) -> None:
        """Wait up to ``linger_s`` for the connection's thread (the client's close frame), then cut it."""
        self.thread.join(linger_s)
        if self.thread.is_alive():  # a client that does not answer: its unread data no longer matters
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.thread.join(1.0)


class BoundedWebSocket(SimpleWebSocketWSGI):
    """Engine.IO's threading WebSocket adapter with the changes of the module docstring.

    Made per server by :func:`bound_websockets` (a subclass carrying that server's limit and reporter)."""

    max_message_bytes: int = 0
    report: TransportReport | None = None

    def __init__(self, handler: Any, server: Any, **kwargs: Any) -> None:
        super().__init__(handler, server, max_message_size=self.max_message_bytes or None, **kwargs)
        self.close_code = CloseReason.NORMAL_CLOSURE
        # The handler is the bound ``_websocket_handler`` of this connection's Engine.IO socket.
        self.eio_sid: str | None = getattr(getattr(handler, "__self__", None), "sid", None)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        """As Engine.IO's adapter does, with :class:`_ServerSide` and a lingering close."""
        sock = environ.get("werkzeug.socket")
        if sock is not None:
            environ = {**environ, "werkzeug.socket": _LeftOpen(sock)}
        self.ws = _ServerSide(environ, **self.server_args)
        try:
            ret = self.app(self)
        finally:
            self.close()
            self.ws.end(LINGER_S)
        if self.ws.mode == "gunicorn":
            raise StopIteration()
        if self.ws.mode == "werkzeug":
            raise ConnectionError()  # how the adapter tells Werkzeug the socket is not HTTP any more
        return ret

    def wait(self) -> Any:
        """The next message, or ``None`` when the connection is over (Engine.IO then closes its side)."""
        data = super().wait()
        if data is None:
            ws = getattr(self, "ws", None)
            if ws is not None and self.max_message_bytes and ws.incoming_message_len > self.max_message_bytes:
                self._report("message_too_big", f"a message of over {self.max_message_bytes} bytes (closed, 1009)")
            return None
        if isinstance(data, str) and (why := eio_framing_error(data)):
            self._report("eio_malformed", why)
            self.close_code = CloseReason.PROTOCOL_ERROR
            return None  # Engine.IO ends the connection as if the client had left; its writer calls close()
        return data

    def close(self) -> None:
        """Send the close frame (once; with 1002 after a framing error) and wake the Engine.IO reader."""
        ws = getattr(self, "ws", None)
        if ws is None:
            return
        if ws.connected and not ws.local_closed:
            try:
                ws.close(reason=self.close_code)
            except Exception:  # noqa: BLE001 - the peer is gone: nothing left to tell it
                ws.local_closed = True
        ws.event.set()

    def _report(self, kind: str, detail: str) -> None:
        if self.report is not None:
            self.report(self.eio_sid, kind, detail)


def bound_websockets(eio_server: Any, max_message_bytes: int, report: TransportReport | None = None) -> None:
    """Make ``eio_server`` (an ``engineio.Server`` in threading mode) use :class:`BoundedWebSocket`, and
    only WebSocket (see the module docstring).

    Only this server changes: its ``_async`` table is the driver module's shared dict, so it gets a copy."""
    if eio_server.async_mode != "threading":
        raise ValueError(f"bounded WebSockets need the threading async mode, not {eio_server.async_mode!r}")
    cls = type("BoundedWebSocketForServer", (BoundedWebSocket,),
               {"max_message_bytes": max_message_bytes, "report": staticmethod(report) if report else None})
    eio_server._async = {**eio_server._async, "websocket": cls}
    eio_server.transports = ["websocket"]
