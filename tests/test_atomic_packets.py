"""A binary event's header and attachments stay together when two threads send to one client."""

from __future__ import annotations

import threading
import time

import socketio
from socketio import packet

from server.atomic_packets import make_packet_sends_atomic


class _RecordingEio:
    """Stands in for the Engine.IO server: records what would be queued, yielding between messages."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []

    def send(self, sid: str, data: str | bytes) -> None:
        self.sent.append(data)
        time.sleep(0.0002)  # let the other sender run, as a busy server would


def _torn_packets(sent: list[str | bytes]) -> int:
    """How many headers announcing an attachment are not followed by that (binary) attachment."""
    return sum(1 for i, m in enumerate(sent)
               if isinstance(m, str) and m.startswith("51-") and not (i + 1 < len(sent) and isinstance(sent[i + 1], bytes)))


def _send_concurrently(server: socketio.Server, n: int = 150) -> list[str | bytes]:
    eio = _RecordingEio()
    server.eio = eio

    def audio() -> None:
        for i in range(n):
            server._send_packet("sid", packet.Packet(packet.EVENT, ["reply_audio", {"seq": i}, b"\x00\x01" * 8]))

    def acks() -> None:
        for i in range(n):
            server._send_packet("sid", packet.Packet(packet.ACK, [{"ok": True}], id=i))

    threads = [threading.Thread(target=audio), threading.Thread(target=acks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return eio.sent


def test_headers_and_attachments_are_queued_together() -> None:
    server = socketio.Server()
    make_packet_sends_atomic(server)
    sent = _send_concurrently(server)
    assert len(sent) == 150 * 3
    assert _torn_packets(sent) == 0
    # And the client side reads every message back whole.
    decoded, pending = [], None
    for m in sent:
        if pending is not None:
            assert isinstance(m, bytes)
            if pending.add_attachment(m):
                decoded.append(pending)
                pending = None
            continue
        pkt = packet.Packet(encoded_packet=m)
        if pkt.attachment_count:
            pending = pkt
        else:
            decoded.append(pkt)
    assert sum(p.packet_type == packet.BINARY_EVENT for p in decoded) == 150
