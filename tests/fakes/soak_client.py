"""Soak clients: N python-socketio ``AsyncClient`` connections that talk like the page, in a child process.

Each client streams its microphone in real time (20 ms PCM packets, silence between utterances) and a
camera JPEG every 500 ms, and loops turns: ``start``; a spoken utterance (a speech fixture) or, every
``text_every`` turns, a typed ``text`` question; then it waits for the verdict (``reply_start`` or
``judgement``) and for the reply to end. Before every ``barge_every``-th turn it does not wait: it speaks
(or types) over the reply that is playing. It reports what it played (``playback``) like the page does.

It counts what a soak must show to be clean: connections dropped without the client asking, turns that
got neither a reply nor a judgement in time, replies that never ended, reply audio with gaps, and every
``error`` event by code. The async client is used because the sync one (websocket-client) shares one TLS
socket between its threads and drops connections over ``wss://`` by itself (docs/web-stack notes).

Runs in its own process (:func:`client_process`) so the server's RSS, threads and CPU are its own.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import socketio

PACKET_MS = 20
MIC_RATE = 16_000
FRAME_EVERY_PACKETS = 25  # a camera frame every 500 ms
REPORT_EVERY_PACKETS = 12  # a playback report about every 250 ms while a reply plays (the page's rate)


@dataclass(frozen=True, slots=True)
class Utterance:
    """A fixture to speak: int16 samples at 16 kHz and how many speech segments it holds."""

    name: str
    pcm: np.ndarray
    segments: int


@dataclass(frozen=True, slots=True)
class ClientPlan:
    """What every client does; the same for all of them (each gets its own random seed)."""

    url: str
    clients: int
    seconds: float
    utterances: tuple[Utterance, ...]
    jpeg: bytes
    reply_samples: int
    """Samples of a whole reply (the fake engine's script), to check that no audio went missing."""
    turns_per_session: int = 8
    barge_every: int = 3
    text_every: int = 5
    turn_timeout_s: float = 20.0
    ws_ping_s: float = 0.0
    """Seconds between WebSocket-level pings (0: none, like browsers). Proxies and some clients send
    them; the server's WebSocket reader thread answers each with a pong, a write that meets the writer
    thread's (what ``server.serving.SerialWriteSocket`` serialises)."""
    seed: int = 0


@dataclass
class ClientStats:
    """One client's counts over the whole run (all its connections)."""

    client: int
    connections: int = 0
    connect_failures: int = 0
    drops: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 0
    voice_turns: int = 0
    text_turns: int = 0
    barge_ins: int = 0
    lost_turns: int = 0
    lost: list[dict[str, Any]] = field(default_factory=list)
    vad_mismatches: int = 0
    replies_started: int = 0
    replies_done: int = 0
    replies_interrupted: int = 0
    stalled_replies: int = 0
    incomplete_audio: int = 0
    seq_gaps: int = 0
    bad_messages: int = 0
    """Messages the client could not take apart (a reply_audio without PCM, a packet that fails to decode)."""
    bad_examples: list[str] = field(default_factory=list)
    """The first few of them, cut short (what arrived in place of the PCM tells which message tore it)."""
    ack_timeouts: int = 0
    judgements: Counter[str] = field(default_factory=Counter)
    interrupts: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    audio_packets_sent: int = 0
    frames_sent: int = 0
    ws_pings: int = 0
    reply_chunks: int = 0
    verdict_ms: list[float] = field(default_factory=list)


async def until(predicate: Any, changed: asyncio.Event, seconds: float, give_up: Any = lambda: False) -> bool:
    """Until ``predicate()`` holds, re-checked whenever ``changed`` is set (and twice a second); False after
    ``seconds`` or once ``give_up()`` (not ``asyncio.timeout``: running out of time is an outcome to count
    here, not an error)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        left = deadline - time.monotonic()
        if left <= 0 or give_up():
            return False
        changed.clear()
        try:
            await asyncio.wait_for(changed.wait(), min(left, 0.5))
        except TimeoutError:
            pass
    return True


@dataclass
class _Reply:
    source: str
    chunks: int = 0
    samples: int = 0
    next_seq: int = 0
    ended: str | None = None


class _Connection:
    """One Socket.IO connection of a client: the event book-keeping the turn loop waits on."""

    def __init__(self, stats: ClientStats, reply_samples: int) -> None:
        self.stats = stats
        self.reply_samples = reply_samples
        self.sio = socketio.AsyncClient(reconnection=False, ssl_verify=False, request_timeout=10)
        self.sio.on("*", self._on_event)
        self._recent: deque[str] = deque(maxlen=6)
        self._read = self.sio._handle_eio_message
        self.sio.eio.on("message", self._traced)
        self.sio.on("disconnect", self._on_disconnect)
        self.leaving = False
        self.dropped = False
        self.changed = asyncio.Event()
        self.speech_ends = 0
        self.verdicts = 0
        self.text_replies = 0
        self.replies: dict[str, _Reply] = {}
        self.latest: str | None = None  # the newest reply_start
        self.speaking: Utterance | None = None
        self.spoken = asyncio.Event()
        self._offset = 0
        self._ended_at: float | None = None
        self._reported: tuple[str, int] | None = None

    async def _traced(self, data: Any) -> None:
        """Socket.IO's message handler, keeping the last few messages: when one cannot be decoded, they
        say what came before it (a lost header, a doubled attachment, a message in between)."""
        self._recent.append(f"bytes[{len(data)}]" if isinstance(data, bytes) else data[:80])
        try:
            await self._read(data)
        except ValueError:
            if len(self.stats.bad_examples) < 3:
                self.stats.bad_examples.append(" | ".join(self._recent))
            raise

    # ------------------------------------------------------------------ events

    async def _on_disconnect(self, reason: Any = None) -> None:
        if not self.leaving:
            self.dropped = True
            self.stats.drops.append({"t": time.time(), "reason": str(reason)})
        self.changed.set()

    async def _on_event(self, event: str, *args: Any) -> None:
        msg = args[0] if args and isinstance(args[0], dict) else {}
        s = self.stats
        if event == "vad" and msg.get("type") == "speech_end":
            self.speech_ends += 1
            self._ended_at = time.monotonic()
        elif event == "reply_start":
            rid = msg["reply_id"]
            self.replies[rid] = _Reply(msg["source"])
            self.latest = rid
            s.replies_started += 1
            if msg["source"] == "voice":
                self._verdict()
            else:
                self.text_replies += 1
        elif event == "judgement":
            s.judgements[str(msg.get("why"))] += 1
            self._verdict()
        elif event == "reply_audio":
            reply = self.replies.get(msg.get("reply_id", ""))
            if len(args) != 2 or not isinstance(args[1], bytes) or len(args[1]) % 2:
                s.bad_messages += 1  # e.g. another packet taken for this event's binary attachment
                if len(s.bad_examples) < 3:
                    s.bad_examples.append(repr(args)[:300])
            elif reply is not None:
                s.seq_gaps += msg["seq"] != reply.next_seq
                reply.next_seq = msg["seq"] + 1
                reply.chunks += 1
                reply.samples += len(args[1]) // 2
                s.reply_chunks += 1
        elif event == "reply_end":
            self._end(msg.get("reply_id"), str(msg.get("reason")))
        elif event == "interrupt":
            s.interrupts[str(msg.get("reason"))] += 1
            self._end(msg.get("reply_id"), "interrupted")
        elif event == "error":
            s.errors[str(msg.get("code"))] += 1
        self.changed.set()

    def _verdict(self) -> None:
        self.verdicts += 1
        if self._ended_at is not None:
            self.stats.verdict_ms.append(round((time.monotonic() - self._ended_at) * 1000, 1))

    def _end(self, reply_id: str | None, reason: str) -> None:
        reply = self.replies.get(reply_id or "")
        if reply is None or reply.ended is not None:
            return
        reply.ended = reason
        if reason == "done":
            self.stats.replies_done += 1
            self.stats.incomplete_audio += reply.samples != self.reply_samples
        else:
            self.stats.replies_interrupted += 1

    async def wait(self, predicate: Any, seconds: float) -> bool:
        """Until ``predicate()`` holds (re-checked on every event); False after ``seconds`` or on a drop."""
        return await until(predicate, self.changed, seconds, give_up=lambda: self.dropped)

    # ------------------------------------------------------------------ the microphone and camera

    async def mic(self, jpeg: bytes, ws_ping_s: float) -> None:
        """20 ms packets on a fixed real-time schedule: the utterance being spoken, else silence."""
        n = MIC_RATE * PACKET_MS // 1000
        ping_every = round(ws_ping_s * 1000 / PACKET_MS)
        silence = np.zeros(n, np.int16).tobytes()
        loop = asyncio.get_running_loop()
        t0, i = loop.time(), 0
        while not self.dropped:
            if i % FRAME_EVERY_PACKETS == 0:
                await self.sio.emit("frame", jpeg)
                self.stats.frames_sent += 1
            await self.sio.emit("audio", self._next_packet(n) or silence)
            self.stats.audio_packets_sent += 1
            if i % REPORT_EVERY_PACKETS == 0:
                await self._report()
            if ping_every and i % ping_every == 0:
                await self._ws_ping()
            i += 1
            delay = t0 + i * PACKET_MS / 1000 - loop.time()
            if delay < -1.0:  # the loop fell far behind (a stalled machine): resync, never burst
                t0, i = loop.time(), 0
            elif delay > 0:
                await asyncio.sleep(delay)

    def _next_packet(self, n: int) -> bytes | None:
        utt = self.speaking
        if utt is None:
            return None
        chunk = utt.pcm[self._offset : self._offset + n]
        self._offset += n
        if self._offset >= utt.pcm.size:
            self.speaking, self._offset = None, 0
            self.spoken.set()
        return chunk.tobytes() if chunk.size else None

    async def _ws_ping(self) -> None:
        ws = getattr(self.sio.eio, "ws", None)  # aiohttp's ClientWebSocketResponse (answers pongs itself)
        if ws is not None and not ws.closed:
            await ws.ping()
            self.stats.ws_pings += 1

    async def _report(self) -> None:
        rid = self.latest
        reply = self.replies.get(rid or "")
        if rid and reply is not None and reply.samples and self._reported != (rid, reply.samples):
            self._reported = (rid, reply.samples)
            await self.sio.emit("control", {"type": "playback", "reply_id": rid, "samples": reply.samples})

    async def say(self, utt: Utterance) -> None:
        """Speak ``utt`` through the mic loop and return once its last packet went out."""
        self.spoken.clear()
        self.speaking = utt
        await asyncio.wait_for(self.spoken.wait(), utt.pcm.size / MIC_RATE + 10)


class SoakClient:
    """One simulated user: connections one after another, turns in a loop, until the plan's time is up."""

    def __init__(self, index: int, plan: ClientPlan, deadline: float) -> None:
        self.index = index
        self.plan = plan
        self.deadline = deadline
        self.rng = random.Random(plan.seed * 1000 + index)
        self.stats = ClientStats(client=index)
        self._turn = 0

    async def run(self) -> ClientStats:
        """Connect, talk, reconnect after ``turns_per_session`` turns (or a drop), until the deadline."""
        await asyncio.sleep(self.rng.uniform(0, 2))  # the users do not all start in the same 20 ms
        while time.monotonic() < self.deadline:
            await self._session()
        return self.stats

    async def _session(self) -> None:
        conn = _Connection(self.stats, self.plan.reply_samples)
        try:
            await conn.sio.connect(self.plan.url, transports=["websocket"], wait_timeout=10)
        except Exception:  # refused, TLS or network failure: counted, retried after a pause
            self.stats.connect_failures += 1
            await asyncio.sleep(1)
            return
        self.stats.connections += 1
        mic: asyncio.Task[None] | None = None
        try:
            if not await self._control(conn, {"type": "start"}):
                return
            mic = asyncio.create_task(conn.mic(self.plan.jpeg, self.plan.ws_ping_s))
            barge = False
            for _ in range(self.plan.turns_per_session or 1 << 30):
                if time.monotonic() >= self.deadline or conn.dropped:
                    break
                barge = await self._one_turn(conn, barge)
        except Exception as exc:  # a send on a dropped connection, a timeout: the drop is already counted
            if not conn.dropped:
                self.stats.errors[f"client:{type(exc).__name__}"] += 1
        finally:
            conn.leaving = True
            if mic is not None:
                mic.cancel()
                await asyncio.gather(mic, return_exceptions=True)
            if conn.sio.connected:
                try:
                    await asyncio.wait_for(conn.sio.disconnect(), 15)
                except Exception:
                    self.stats.errors["client:disconnect_failed"] += 1

    async def _control(self, conn: _Connection, msg: dict[str, Any]) -> bool:
        try:
            ack = await conn.sio.call("control", msg, timeout=10)
        except socketio.exceptions.TimeoutError:
            self.stats.ack_timeouts += 1
            return False
        return bool(ack and ack.get("ok"))

    async def _one_turn(self, conn: _Connection, barge: bool) -> bool:
        """One turn (``barge``: a reply is playing and this turn talks over it). Returns the next's barge."""
        plan, s = self.plan, self.stats
        self._turn += 1
        s.turns += 1
        s.barge_ins += barge
        await self._control(conn, {"type": "start"})
        before_reply = conn.latest
        if self._turn % plan.text_every == 0:
            s.text_turns += 1
            before = conn.text_replies
            await self._control(conn, {"type": "text", "text": f"What do you see? (turn {self._turn})"})
            if not await conn.wait(lambda: conn.text_replies > before, plan.turn_timeout_s):
                self._lose(conn, "text", 1)
                return False
        else:
            s.voice_turns += 1
            utt = plan.utterances[self._turn % len(plan.utterances)]
            ends, verdicts = conn.speech_ends, conn.verdicts
            await conn.say(utt)

            def answered() -> bool:
                heard = conn.speech_ends - ends
                return heard >= utt.segments and conn.verdicts - verdicts >= heard

            if not await conn.wait(answered, plan.turn_timeout_s):
                heard = max(utt.segments, conn.speech_ends - ends)
                self._lose(conn, utt.name, heard - (conn.verdicts - verdicts))
                return False
            s.vad_mismatches += conn.speech_ends - ends != utt.segments
        reply_id = conn.latest
        if reply_id is None or reply_id == before_reply:
            return False  # judged not addressed (a judgement): nothing plays
        reply = conn.replies[reply_id]
        if (self._turn + 1) % plan.barge_every == 0:
            # the next turn talks over this reply: wait until it is audible, then a moment more
            await conn.wait(lambda: reply.chunks > 0 or reply.ended is not None, plan.turn_timeout_s)
            await asyncio.sleep(self.rng.uniform(0.3, 1.0))
            return reply.ended is None
        playing_s = plan.reply_samples / 24_000
        if not await conn.wait(lambda: reply.ended is not None, playing_s + plan.turn_timeout_s):
            if not conn.dropped:
                s.stalled_replies += 1
        return False

    def _lose(self, conn: _Connection, what: str, n: int) -> None:
        if n > 0:
            self.stats.lost_turns += n
            self.stats.lost.append({"t": time.time(), "what": what, "n": n, "dropped": conn.dropped})


async def run_clients(plan: ClientPlan) -> dict[str, Any]:
    """Run every client of ``plan`` to its end: per-client counts as plain dicts, plus the exceptions
    that escaped the Socket.IO client's own tasks (it decodes each message in a task of its own, so a
    packet it cannot parse is only visible here)."""
    deadline = time.monotonic() + plan.seconds
    escaped: Counter[str] = Counter()

    def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        escaped[f"{type(exc).__name__}: {str(exc)[:120]}" if exc else str(context.get("message"))] += 1

    asyncio.get_running_loop().set_exception_handler(on_error)
    clients = [SoakClient(i, plan, deadline) for i in range(plan.clients)]
    stats = await asyncio.gather(*(c.run() for c in clients))
    return {"clients": [_as_dict(s) for s in stats], "client_task_errors": dict(escaped)}


def _as_dict(stats: ClientStats) -> dict[str, Any]:
    d = asdict(stats)
    for key in ("judgements", "interrupts", "errors"):
        d[key] = dict(getattr(stats, key))
    v = stats.verdict_ms
    d["verdict_ms"] = {"n": len(v), "median": float(np.median(v)) if v else None,
                       "max": max(v) if v else None}
    return d


def client_process(plan: ClientPlan, conn: Any) -> None:
    """Child-process entry: run the clients and send their counts (or the failure) through ``conn``."""
    try:
        conn.send(asyncio.run(run_clients(plan)))
    except BaseException as exc:  # the parent must hear about it instead of waiting for its deadline
        conn.send({"failed": repr(exc)})
        raise
    finally:
        conn.close()
