"""The real-time client of the interaction benchmark: one Socket.IO session per scenario.

It behaves like the page with a microphone in a noisy room: 20 ms PCM packets on a fixed real-time schedule
(the room's noise between clips, noise + voice during them), a player that obeys ``pause``/``resume``/
``interrupt`` (``timeline.Player``) and ``playback`` reports about 4 times a second. Every server event is
stamped on arrival; each mic packet's actual send time is kept, so the client time of any clip sample (its
speech onset or offset) is known to the packet. The async client is used for the reasons given in
``tests/fakes/soak_client.py`` (the sync one shares its socket between threads).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import socketio

from bench.interaction.clips import MIC, Clip, Scenario
from bench.interaction.timeline import Event, Player, Trial

PACKET = MIC * 20 // 1000
REPORT_EVERY = 12  # packets: a playback report about every 250 ms, the page's rate
LEAD_IN_S = 0.6
"""Room noise before the first clip (the VAD sees a noise floor before speech, as in a room)."""
REPLY_WAIT_S = 25.0
"""Longest wait for the lead request's reply audio (a cold engine on a busy CPU can be slow)."""
SETTLE_S = 1.5
"""The trial ends once nothing happened for this long after the probe (no reply open, nothing audible)."""
MAX_AFTER_S = 20.0


class _Session:
    """One connection: event log, player, and the mic loop."""

    def __init__(self, scenario: Scenario, seed_offset: int) -> None:
        self.sc = scenario
        self.sio = socketio.AsyncClient(reconnection=False, request_timeout=10)
        self.sio.on("*", self._on_event)
        self.events: list[Event] = []
        self.player = Player()
        self.changed = asyncio.Event()
        self.t0 = time.monotonic()
        self.sent_at: list[float] = []  # client time at which packet i went out
        self._clip: Clip | None = None
        self._clip_pos = 0
        self._clip_start: dict[int, int] = {}  # id(clip) -> mic sample where it began
        self._noise_pos = seed_offset % scenario.noise_bed.size
        self._noise_gain = float(10 ** (scenario.noise_dbfs / 20))
        self.clip_done = asyncio.Event()
        self.stopped = False
        self.last_event = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def _on_event(self, event: str, *args: Any) -> None:
        data = args[0] if args and isinstance(args[0], dict) else {}
        samples = len(args[1]) // 2 if event == "reply_audio" and len(args) > 1 and isinstance(args[1], bytes) else 0
        ev = Event(self.now(), event, {k: v for k, v in data.items() if k != "timings_ms"} | (
            {"timings_ms": data["timings_ms"]} if "timings_ms" in data else {}), samples)
        self.events.append(ev)
        self.player.feed(ev)
        self.last_event = ev.t
        if event in ("pause", "interrupt"):  # the page reports what was heard at once when it stops
            await self._report()
        self.changed.set()

    async def _report(self) -> None:
        rid = self.player.current()
        if rid is None:
            rid = next((e.data["reply_id"] for e in reversed(self.events) if e.name == "reply_audio"), None)
        if rid is not None and rid in self.player.played:
            await self.sio.emit("control", {"type": "playback", "reply_id": rid, "samples": self.player.played[rid]})

    def say(self, clip: Clip) -> None:
        """Start ``clip`` at the next packet."""
        self.clip_done.clear()
        self._clip, self._clip_pos = clip, 0

    def _packet(self, index: int) -> bytes:
        bed = self.sc.noise_bed
        idx = (self._noise_pos + np.arange(PACKET)) % bed.size
        self._noise_pos = (self._noise_pos + PACKET) % bed.size
        x = bed[idx] * self._noise_gain
        clip = self._clip
        if clip is not None:
            if self._clip_pos == 0:
                self._clip_start[id(clip)] = index * PACKET
            part = clip.voice_track[self._clip_pos : self._clip_pos + PACKET]
            x[: part.size] += part
            self._clip_pos += PACKET
            if self._clip_pos >= clip.voice_track.size:
                self._clip = None
                self.clip_done.set()
        return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()

    async def mic(self) -> None:
        """Send packet i once its 20 ms have been "captured" (at t0 + (i+1) × 20 ms), like a real mic."""
        i = 0
        while not self.stopped:
            delay = self.t0 + (i + 1) * PACKET / MIC - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            payload = self._packet(i)
            self.sent_at.append(self.now())
            await self.sio.emit("audio", payload)
            if i % REPORT_EVERY == 0:
                self.player.advance(self.now())
                await self._report()
            i += 1

    def clip_times(self, clip: Clip) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """Client times and mic-clock ms of ``clip``'s speech spans (it must have been sent)."""
        base = self._clip_start[id(clip)]

        def at(sample: int) -> float:
            # the packet holding the sample went out when its last sample was captured; step back from there
            n = base + sample
            i = min(n // PACKET, len(self.sent_at) - 1)
            return self.sent_at[i] - ((i + 1) * PACKET - n) / MIC

        spans = [(at(s.start), at(s.end)) for s in clip.speech]
        mic_ms = [((base + s.start) / 16, (base + s.end) / 16) for s in clip.speech]
        return spans, mic_ms

    def lateness_ms(self) -> float:
        """Worst lateness of a packet against its schedule."""
        late = [t - (i + 1) * PACKET / MIC for i, t in enumerate(self.sent_at)]
        return round(max(late, default=0.0) * 1000, 1)

    async def wait(self, predicate: Any, seconds: float) -> bool:
        """Until ``predicate()`` holds, re-checked on every event and every 50 ms; False after ``seconds``."""
        deadline = time.monotonic() + seconds
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 0.05))
            except TimeoutError:
                pass
        return True

    def quiet(self) -> bool:
        """No reply open or audible, every ended turn got its verdict, and nothing happened for ``SETTLE_S``."""
        now = self.now()
        self.player.advance(now)
        opened = {e.data["reply_id"] for e in self.events if e.name == "reply_start"}
        closed = {e.data.get("reply_id") for e in self.events if e.name in ("reply_end", "interrupt")}
        ends = sum(1 for e in self.events if e.name == "vad" and e.data.get("type") == "speech_end")
        verdicts = sum(1 for e in self.events if e.name == "judgement"
                       or (e.name == "reply_start" and e.data.get("source") == "voice"))
        return (not (opened - closed) and not self.player.busy and verdicts >= ends
                and now - self.last_event >= SETTLE_S)


async def _get_reply_going(s: _Session, lead: Clip, trial: Trial) -> float:
    """Ask ``lead`` aloud; when the verdict dismisses it (``--awakening model``: random weights always judge
    ☟), type it instead (a typed question is always answered). Returns the arrival time of the first audio
    of the reply that plays."""
    for attempt in ("voice", "text"):
        seen = len(s.events)
        if attempt == "voice":
            s.say(lead)
            await s.clip_done.wait()
            trial.lead_speech = s.clip_times(lead)[0]
        else:
            ack = await s.sio.call("control", {"type": "text", "text": lead.text}, timeout=10)
            if not (ack and ack.get("ok")):
                raise RuntimeError(f"typed lead refused: {ack}")
        trial.lead_mode = attempt

        def verdict(seen: int = seen) -> bool:
            return any(e.name in ("reply_audio", "judgement") for e in s.events[seen:])

        if not await s.wait(verdict, REPLY_WAIT_S):
            raise TimeoutError(f"no reply audio and no verdict for the {attempt} lead request")
        audio = next((e.t for e in s.events[seen:] if e.name == "reply_audio"), None)
        if audio is not None:
            return audio
    raise RuntimeError("the typed lead request got no reply")


async def run_trial(url: str, scenario: Scenario) -> Trial:
    """Play ``scenario`` against the server at ``url`` in real time and return what the client saw."""
    s = _Session(scenario, seed_offset=scenario.index * 7919 + len(scenario.category) * 104729)
    trial = Trial(scenario.name, scenario.category, s.events, 0.0)
    mic: asyncio.Task[None] | None = None
    try:
        await s.sio.connect(url, transports=["websocket"], wait_timeout=10)
        ack = await s.sio.call("control", {"type": "start"}, timeout=10)
        if not (ack and ack.get("ok")):
            raise RuntimeError(f"start refused: {ack}")
        # the trial's clock starts with the session's mic clock; what came before (hello) is not part of it
        s.t0 = time.monotonic()
        s.events.clear()
        s.player = Player()
        mic = asyncio.create_task(s.mic())
        await asyncio.sleep(LEAD_IN_S)
        if scenario.lead is not None:
            first = await _get_reply_going(s, scenario.lead, trial)
            await asyncio.sleep(max(0.0, first + scenario.inject_after_s - s.now()))
        s.say(scenario.probe)
        await s.clip_done.wait()
        trial.probe_speech, trial.probe_speech_mic_ms = s.clip_times(scenario.probe)
        # at least the VAD's end of turn plus a verdict; then until quiet
        await asyncio.sleep(1.0)
        await s.wait(s.quiet, MAX_AFTER_S)
    except Exception as exc:  # a refused connect, a timeout: the trial is recorded as invalid, the bench goes on
        trial.error = f"{type(exc).__name__}: {exc}"
    finally:
        s.stopped = True
        if mic is not None:
            mic.cancel()
            await asyncio.gather(mic, return_exceptions=True)
        trial.end = s.now()
        trial.send_lag_ms_max = s.lateness_ms()
        if s.sio.connected:
            await s.sio.disconnect()
    return trial
