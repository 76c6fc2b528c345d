"""Werkzeug serving with the two settings real-time audio needs: TCP_NODELAY and a per-thread TLS handshake."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0


class SerialWriteSocket:
    """A connection whose writes are serialised and complete (``send`` writes everything).

    simple-websocket writes to the socket from two threads (the sender, and its reader thread answering
    pings and close frames) and uses ``send`` without looking at how much was written. On a TLS socket two
    concurrent ``SSL_write`` calls on one connection corrupt OpenSSL's record state (seen as
    ``[SSL: BAD_LENGTH]`` and a dropped connection under load); a short write would silently cut a frame.
    Reads stay concurrent (one reader thread), everything else is the wrapped socket's.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._write_lock = threading.Lock()

    def send(self, data: bytes, flags: int = 0) -> int:
        with self._write_lock:
            self._sock.sendall(data, flags)
        return len(data)

    def sendall(self, data: bytes, flags: int = 0) -> None:
        with self._write_lock:
            self._sock.sendall(data, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class RealtimeRequestHandler(WSGIRequestHandler):
    """Sets TCP_NODELAY and finishes a deferred TLS handshake in the connection's own thread.

    Without NODELAY a Socket.IO binary event (two small WebSocket frames) meets Nagle + delayed ACK
    and takes ~40 ms instead of <1 ms.
    """

    _skip = False

    def setup(self) -> None:
        conn = self.request
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not a TCP socket (never in practice); latency only
        if isinstance(conn, ssl.SSLSocket):
            conn.settimeout(HANDSHAKE_TIMEOUT_S)
            try:
                conn.do_handshake()
            except (OSError, ssl.SSLError) as exc:
                # Plain HTTP on the TLS port, idle scanners, aborted clients: drop only this one.
                log.debug("TLS handshake failed from %s: %s", self.client_address, exc)
                self._skip = True
                return
            conn.settimeout(None)
        super().setup()
        # Werkzeug hands ``self.connection`` to WebSocket upgrades as ``werkzeug.socket``.
        self.connection = SerialWriteSocket(conn)

    def handle(self) -> None:
        if not self._skip:
            super().handle()

    def finish(self) -> None:
        if not self._skip:
            super().finish()

    def connection_dropped(self, error: BaseException, environ: Any = None) -> None:
        """The WebSocket adapter ends its request this way: the connection carried a WebSocket and is over.

        Without this, HTTP keep-alive read the socket for a next request (the client's close frame,
        parsed as a bad request line) or waited for one as long as the client kept the socket open."""
        self.close_connection = True

    def version_string(self) -> str:
        """The ``Server:`` header: no Werkzeug/Python versions for scanners to match against known bugs."""
        return "vita-duplex"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s %s", self.address_string(), self.requestline, code)

    def log_error(self, format: str, *args: object) -> None:  # noqa: A002 - base-class signature
        # Werkzeug reads each WebSocket close frame as a bad HTTP request line; that is not an error.
        log.debug("%s: " + format, self.address_string(), *args)


def build_server(app: Any, host: str, port: int, ssl_context: ssl.SSLContext | None) -> BaseWSGIServer:
    """A threaded Werkzeug server for ``app`` (port 0 picks a free port)."""
    # The Werkzeug logger would print a line per request and a bogus 400 for each WebSocket close frame.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    return make_server(host, port, app, threaded=True, ssl_context=ssl_context, request_handler=RealtimeRequestHandler)


class ServerThread:
    """A server running in a background thread; ``stop()`` shuts it down and joins the thread."""

    def __init__(self, server: BaseWSGIServer) -> None:
        self.server = server
        self.port = server.server_port
        self._thread = threading.Thread(target=server.serve_forever, name=f"http-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close the listening socket and wait for the accept loop to end."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
