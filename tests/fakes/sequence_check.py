"""Check, inside the server process, that every Socket.IO binary event leaves as a header followed by
exactly its attachments, at two depths: as queued on the Engine.IO socket and as written to the WebSocket.

A client that receives a binary message no header announced (python-socketio: ``ValueError: invalid literal
for int()``; the browser's socket.io-client closes the connection with "parse error") can tell where it
arose: if both depths are clean, the messages left the server whole and the fault is below (transport)
or in the client.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import engineio.socket
import simple_websocket.ws
from engineio import packet as eio_packet

_HEADER = re.compile(r"^5(\d+)-")


class SequenceCheck:
    """Per connection and depth: the attachments still due after the last header."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[tuple[str, Any], int] = {}
        self.errors: Counter[str] = Counter()
        self.examples: list[str] = []
        self.seen: Counter[str] = Counter()

    def see(self, depth: str, conn: Any, data: str | bytes) -> None:
        """One Socket.IO-level message (an Engine.IO MESSAGE's data) sent on ``conn`` at ``depth``."""
        key = (depth, conn)
        with self._lock:
            self.seen[depth] += 1
            due = self._due.get(key, 0)
            if isinstance(data, bytes):
                if due:
                    self._due[key] = due - 1
                else:
                    self._bad(depth, "a binary message with no header before it")
                return
            if due:
                self._bad(depth, f"text while {due} attachment(s) were due: {data[:60]!r}")
            m = _HEADER.match(data)
            self._due[key] = int(m.group(1)) if m else 0

    def forget(self, conn: Any) -> None:
        with self._lock:
            for key in [k for k in self._due if k[1] == conn]:
                del self._due[key]

    def _bad(self, depth: str, what: str) -> None:
        self.errors[depth] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{depth}: {what}")

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {"checked": dict(self.seen), "errors": dict(self.errors), "examples": list(self.examples)}


@contextmanager
def checking_sequences() -> Iterator[SequenceCheck]:
    """Patch Engine.IO's ``Socket.send`` and simple-websocket's ``send`` in this process while active."""
    check = SequenceCheck()
    queue_send = engineio.socket.Socket.send
    ws_send = simple_websocket.ws.Base.send

    def queued(self: Any, pkt: Any) -> Any:
        if pkt.packet_type == eio_packet.MESSAGE:
            check.see("queued", self.sid, pkt.data)
        return queue_send(self, pkt)

    def written(self: Any, data: Any) -> Any:
        if isinstance(data, bytes):
            check.see("written", id(self), data)
        elif isinstance(data, str) and data[:1] == "4":  # Engine.IO MESSAGE; pings and noops don't count
            check.see("written", id(self), data[1:])
        return ws_send(self, data)

    engineio.socket.Socket.send = queued  # type: ignore[method-assign]
    simple_websocket.ws.Base.send = written  # type: ignore[method-assign]
    try:
        yield check
    finally:
        engineio.socket.Socket.send = queue_send  # type: ignore[method-assign]
        simple_websocket.ws.Base.send = ws_send  # type: ignore[method-assign]
