"""A binary event's header and attachments stay together when two threads send to one client.

Driven through the production paths: ``emit(..., to=sid)`` (how sessions send reply audio) against the
server's own acknowledgement path, on a real ``socketio.Server`` whose Engine.IO layer only records.
"""

from __future__ import annotations

import threading
import time

import pytest
import socketio
from engineio import packet as eio_packet
from socketio import packet

from server.atomic_packets import make_packet_sends_atomic

N = 150


class _RecordingEio:
    """Stands in for the Engine.IO server: records what would be queued, yielding between messages."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []

    def generate_id(self) -> str:
        return "sid-1"

    def _add(self, data: str | bytes) -> None:
        self.sent.append(data)
        time.sleep(0.0002)  # let the other sender run, as a busy server would

    def send(self, sid: str, data: str | bytes) -> None:
        self._add(data)

    def send_packet(self, sid: str, pkt: eio_packet.Packet) -> None:
        self._add(pkt.data)


def _connected_server() -> tuple[socketio.Server, _RecordingEio, str]:
    """A server with one client connected to ``/`` (its CONNECT answer already recorded)."""
    server = socketio.Server()
    server.on("connect", lambda *a: None)
    eio = _RecordingEio()
    server.eio = eio
    server._handle_eio_connect("eio-1", {})
    server._handle_eio_message("eio-1", "0")
    sid = server.manager.sid_from_eio_sid("eio-1", "/")
    assert sid is not None
    eio.sent.clear()
    return server, eio, sid


def _torn_packets(sent: list[str | bytes]) -> int:
    """How many headers announcing an attachment are not followed by that (binary) attachment."""
    return sum(1 for i, m in enumerate(sent)
               if isinstance(m, str) and m.startswith("51-") and not (i + 1 < len(sent) and isinstance(sent[i + 1], bytes)))


def _send_concurrently(server: socketio.Server, sid: str) -> None:
    def audio() -> None:
        for i in range(N):
            server.emit("reply_audio", ({"seq": i}, b"\x00\x01" * 8), to=sid)

    def acks() -> None:
        eio_sid = server.manager.eio_sid_from_sid(sid, "/")
        for i in range(N):
            server._send_packet(eio_sid, packet.Packet(packet.ACK, [{"ok": True}], id=i))

    threads = [threading.Thread(target=audio), threading.Thread(target=acks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _decode(sent: list[str | bytes]) -> list[packet.Packet]:
    """Read the messages back as a client does (an attachment must follow its header)."""
    decoded, pending = [], None
    for m in sent:
        if pending is not None:
            assert isinstance(m, bytes), f"text message where an attachment was due: {m!r}"
            if pending.add_attachment(m):
                decoded.append(pending)
                pending = None
            continue
        pkt = packet.Packet(encoded_packet=m)
        if pkt.attachment_count:
            pending = pkt
        else:
            decoded.append(pkt)
    return decoded


def test_headers_and_attachments_are_queued_together() -> None:
    server, eio, sid = _connected_server()
    make_packet_sends_atomic(server)
    _send_concurrently(server, sid)
    assert len(eio.sent) == N * 3
    assert _torn_packets(eio.sent) == 0
    decoded = _decode(eio.sent)
    assert sum(p.packet_type == packet.BINARY_EVENT for p in decoded) == N
    assert sum(p.packet_type == packet.ACK for p in decoded) == N


def test_without_the_wrapper_the_race_is_real() -> None:
    """The test above could not fail if the race did not happen here: unwrapped, messages interleave."""
    server, eio, sid = _connected_server()
    _send_concurrently(server, sid)
    if _torn_packets(eio.sent) == 0:
        pytest.skip("the scheduler ran the two senders one after the other this time")
    with pytest.raises(AssertionError, match="attachment was due"):
        _decode(eio.sent)
