"""Keep each Socket.IO packet's Engine.IO messages contiguous on its connection.

A Socket.IO event with binary data (``reply_audio``) goes out as several Engine.IO messages: a text header
that announces N attachments, then the N binary attachments, queued one by one. When two threads send to
one client at once (the session's writer thread with reply audio, the connection's reader thread with an
acknowledgement), a text packet can land between a header and its attachment: the client then takes the
text for the attachment and fails on the real one (``ValueError: invalid literal for int() … b'\\x00'`` in
the client), losing both messages.

python-socketio queues messages on two paths: ``Server._send_packet`` (acknowledgements, CONNECT answers,
disconnects) and ``Manager.emit`` (every ``emit``, which encodes once and queues each message itself).
Both are wrapped under one lock.
"""

from __future__ import annotations

import functools
import threading
from typing import Any


def make_packet_sends_atomic(server: Any) -> None:
    """Serialise ``server._send_packet`` and ``server.manager.emit`` (a ``socketio.Server``) so that one
    packet's messages are queued together.

    One lock for the server is enough: the wrapped calls only put messages on per-connection queues (the
    Engine.IO writer threads do the I/O), so they never block on a slow client. It is re-entrant because
    ``Manager.emit`` with a callback queues through ``_send_packet``.
    """
    lock = threading.RLock()

    def locked(call: Any) -> Any:
        @functools.wraps(call)
        def run(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return call(*args, **kwargs)

        return run

    server._send_packet = locked(server._send_packet)
    server.manager.emit = locked(server.manager.emit)
