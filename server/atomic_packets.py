"""Keep each Socket.IO packet's Engine.IO messages contiguous on its connection.

A Socket.IO event with binary data (``reply_audio``) goes out as several Engine.IO messages: a text header
that announces N attachments, then the N binary attachments. python-socketio queues them one by one
(``Server._send_packet``). When two threads send to one client at once (the session's writer thread with
reply audio, the connection's reader thread with an acknowledgement), a text packet can land between a
header and its attachment: the client then takes the text for the attachment and fails on the real one
(``ValueError: invalid literal for int() … b'\\x00'`` in the client), losing both messages.
"""

from __future__ import annotations

import threading
from typing import Any


def make_packet_sends_atomic(server: Any) -> None:
    """Wrap ``server._send_packet`` (a ``socketio.Server``) so one packet's messages are queued together.

    One lock for the server is enough: the wrapped call only puts messages on per-connection queues
    (the Engine.IO writer threads do the I/O), so it never blocks on a slow client.
    """
    original = server._send_packet
    lock = threading.Lock()

    def send_packet(eio_sid: str, pkt: Any) -> None:
        with lock:
            original(eio_sid, pkt)

    server._send_packet = send_packet
