"""The client's timeline of one trial, the page's player replayed on it, and the trial's metrics.

All times are seconds on the client's monotonic clock, 0 at the session's ``start``. The player is the page's:
a reply chunk plays (24 kHz, real time) from its arrival, after what is queued before it; ``pause`` stops it
and keeps the queue, ``resume`` plays on, ``interrupt`` empties it; chunks of an older epoch are dropped.
Replaying it on the arrival times says exactly when the client was audible, so "the client went silent" is
well defined: the end of the audible stretch, whether a ``pause``/``interrupt`` cut it or the audio ran out.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

REPLY_RATE = 24_000
MIC_RATE = 16_000
GAP_S = 0.005
"""Audible intervals closer than this are one stretch (float rounding between back-to-back chunks)."""


@dataclass(frozen=True, slots=True)
class Event:
    """A server event as the client received it."""

    t: float
    name: str
    data: dict[str, Any]
    samples: int = 0
    """``reply_audio``: PCM samples in the chunk."""


@dataclass(frozen=True, slots=True)
class Audible:
    """The client's speaker played ``reply_id`` from ``start`` to ``end``."""

    start: float
    end: float
    reply_id: str


class Player:
    """The page's player on the client's clock (feed events in arrival order)."""

    def __init__(self) -> None:
        self._queue: deque[list[Any]] = deque()  # [reply_id, seconds left]
        self._paused = False
        self._epoch = 0
        self._now = 0.0
        self.audible: list[Audible] = []
        self.played: dict[str, int] = {}
        """Samples played per reply (what the client reports with ``playback``)."""

    def advance(self, t: float) -> None:
        """Play whatever is queued up to time ``t``."""
        while t > self._now and self._queue and not self._paused:
            item = self._queue[0]
            step = min(item[1], t - self._now)
            self._add(self._now, self._now + step, item[0])
            self.played[item[0]] = self.played.get(item[0], 0) + round(step * REPLY_RATE)
            item[1] -= step
            self._now += step
            if item[1] <= 1e-9:
                self._queue.popleft()
        self._now = max(self._now, t)

    def _add(self, start: float, end: float, rid: str) -> None:
        last = self.audible[-1] if self.audible else None
        if last is not None and last.reply_id == rid and start - last.end < GAP_S:
            self.audible[-1] = Audible(last.start, end, rid)
        else:
            self.audible.append(Audible(start, end, rid))

    def feed(self, ev: Event) -> None:
        """Apply one event at its arrival time."""
        self.advance(ev.t)
        d = ev.data
        if ev.name == "reply_start":
            self._epoch = max(self._epoch, int(d.get("epoch", 0)))
        elif ev.name == "reply_audio" and int(d.get("epoch", 0)) >= self._epoch:
            self._queue.append([d["reply_id"], ev.samples / REPLY_RATE])
        elif ev.name == "pause":
            self._paused = True
        elif ev.name == "resume":
            self._paused = False
        elif ev.name == "interrupt":
            self._epoch = max(self._epoch, int(d.get("epoch", 0)))
            self._queue.clear()
            self._paused = False

    @property
    def busy(self) -> bool:
        """Audio is queued (playing or paused)."""
        return bool(self._queue)

    def current(self) -> str | None:
        """The reply at the head of the queue."""
        return self._queue[0][0] if self._queue else None


def replay(events: list[Event], until: float) -> Player:
    """The player after all ``events``, played on to ``until``."""
    p = Player()
    for ev in events:
        p.feed(ev)
    p.advance(until)
    return p


@dataclass
class Trial:
    """What one trial recorded: the events, and when (client clock) each speech span of the clips was sent."""

    name: str
    category: str
    events: list[Event]
    end: float
    probe_speech: list[tuple[float, float]] = field(default_factory=list)
    """Client times of the probe's ground-truth speech spans (empty: the probe was never sent)."""
    probe_speech_mic_ms: list[tuple[float, float]] = field(default_factory=list)
    """The same spans on the session's mic clock (ms of audio since ``start``), to match ``vad`` events."""
    lead_speech: list[tuple[float, float]] = field(default_factory=list)
    lead_mode: str = ""
    """How the lead request got its reply: ``voice``, or ``text`` (typed, after the verdict dismissed it)."""
    error: str | None = None
    send_lag_ms_max: float = 0.0
    """Worst lateness of a mic packet against its real-time schedule."""


@dataclass
class Outcome:
    """One trial's metrics (None: does not apply to the category, or could not be measured)."""

    name: str
    category: str
    valid: bool
    invalid_reason: str | None = None
    took_over: bool | None = None
    """The category's take-over: see ``CATEGORY_RULES`` for what counts."""
    response_latency_ms: float | None = None
    stop_latency_ms: float | None = None
    stop_cause: str | None = None
    """What silenced the client after the probe's onset: ``pause``, ``interrupt``, or ``reply_ended``."""
    false_interruption: bool | None = None
    resumed: bool | None = None
    resume_gap_ms: float | None = None
    """Silence the user heard between the stop and the resumed reply."""
    turn_cut_in_pause: bool | None = None
    """pause: the server's VAD ended the turn inside the pause (a ``speech_end`` between the two parts)."""
    judgements: list[str] = field(default_factory=list)
    vad_turns: int = 0
    """``speech_end`` events for the probe's speech."""
    underruns: int = 0
    """Silences inside a reply's playback that no pause explains (late chunks: a loaded machine)."""
    underrun_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (times rounded to 0.1 ms)."""
        d = asdict(self)
        for k in ("response_latency_ms", "stop_latency_ms", "resume_gap_ms", "underrun_ms"):
            if d[k] is not None:
                d[k] = round(d[k], 1)
        return d


CATEGORY_RULES: dict[str, dict[str, str]] = {
    "pause": {
        "took_over": "assistant audio played at the client between the end of the first part and the end of "
                     "the request (it talked into the pause or over the rest): an error",
        "response_latency_ms": "end of the whole request → first audio of the reply started after it",
        "turn_cut_in_pause": "the server's VAD ended the turn inside the pause (speech_end between the parts)",
    },
    "backchannel": {
        "took_over": "a new reply started after the backchannel (it was taken as a turn): an error",
        "false_interruption": "the assistant's audio, playing at the backchannel's onset, was silenced by "
                              "pause/interrupt",
        "stop_latency_ms": "backchannel onset → client silent, when it was silenced",
        "resumed": "a resume followed and the same reply played on",
    },
    "side_talk": {
        "took_over": "assistant audio played after the other voice began: an error with --awakening model, "
                     "expected with always (everything is answered)",
        "response_latency_ms": "end of the other voice → first reply audio, when it answered",
    },
    "smooth": {
        "took_over": "the assistant answered (audio played after the end of the request): should be 1",
        "response_latency_ms": "end of user speech → first audio of the reply",
    },
    "interruption": {
        "took_over": "a new reply to the interruption played: should be 1",
        "stop_latency_ms": "interruption onset → client silent: arrival of the pause or interrupt that cut "
                           "the reply while it was in progress (the player stops on arrival)",
        "response_latency_ms": "end of the interruption → first audio of the new reply",
        "resumed": "the old reply resumed instead (the interruption was dismissed)",
    },
}


def _reply_starts(events: list[Event]) -> list[tuple[float, str]]:
    return [(e.t, e.data["reply_id"]) for e in events if e.name == "reply_start"]


def _first_audio(events: list[Event], rid: str) -> float | None:
    return next((e.t for e in events if e.name == "reply_audio" and e.data.get("reply_id") == rid), None)


def _in_progress(events: list[Event], rid: str, t: float) -> bool:
    """Whether reply ``rid`` is still going at ``t``: its audio started, it was not cut off (interrupt), and
    either more is to come (no ``reply_end`` yet) or the player still holds some of it."""
    before = [e for e in events if e.t < t]
    if not any(e.name == "reply_audio" and e.data.get("reply_id") == rid for e in before):
        return False
    if any(e.name == "interrupt" and e.data.get("reply_id") == rid for e in before):
        return False
    if not any(e.name == "reply_end" and e.data.get("reply_id") == rid for e in before):
        return True
    p = replay(before, t)
    return p.busy and p.current() == rid


def underruns(player: Player, events: list[Event]) -> tuple[int, float]:
    """(count, total seconds) of silences inside a reply's playback that no pause explains: chunks that
    arrived after the player had run dry."""
    pauses = [e.t for e in events if e.name == "pause"]
    n, total = 0, 0.0
    for a, b in zip(player.audible, player.audible[1:], strict=False):
        if a.reply_id == b.reply_id and b.start - a.end >= GAP_S and not any(a.end - 1e-6 <= t <= b.start for t in pauses):
            n += 1
            total += b.start - a.end
    return n, total


def _response(trial: Trial, span_start_ms: float) -> tuple[str | None, float | None]:
    """The reply answering the speech span that began at ``span_start_ms`` (mic clock): the first
    ``reply_start`` after the ``speech_end`` that closed it (the first to end after the span began: the VAD's
    end may fall a little before the ground truth's soft tail, or well after it in noise), and that reply's
    first audio arrival."""
    ev = trial.events
    ends = [e.t for e in ev if e.name == "vad" and e.data.get("type") == "speech_end"
            and float(e.data.get("end_ms") or 0) > span_start_ms]
    if not ends:
        return None, None
    rid = next((r for t, r in _reply_starts(ev) if t >= ends[0]), None)
    return rid, (_first_audio(ev, rid) if rid else None)


def evaluate(trial: Trial) -> Outcome:
    """The trial's metrics under its category's rules (``CATEGORY_RULES``)."""
    out = Outcome(trial.name, trial.category, valid=True)
    if trial.error or not trial.probe_speech:
        out.valid, out.invalid_reason = False, trial.error or "probe not sent"
        return out
    ev = trial.events
    player = replay(ev, trial.end)
    onset, offset = trial.probe_speech[0][0], trial.probe_speech[-1][1]
    onset_ms = trial.probe_speech_mic_ms[0][0]
    out.judgements = [str(e.data.get("why")) for e in ev if e.name == "judgement" and e.t >= onset]
    out.vad_turns = sum(1 for e in ev if e.name == "vad" and e.data.get("type") == "speech_end"
                        and float(e.data.get("end_ms") or 0) > onset_ms)
    audible_after = [a for a in player.audible if a.end > onset]
    gaps, gap_s = underruns(player, ev)
    out.underruns, out.underrun_ms = gaps, gap_s * 1000
    cat = trial.category

    if cat in ("smooth", "side_talk", "pause"):
        rid, first = _response(trial, trial.probe_speech_mic_ms[-1][0])
        if first is not None:
            out.response_latency_ms = (first - offset) * 1000
        if cat == "smooth":
            out.took_over = first is not None
        elif cat == "side_talk":
            out.took_over = bool(audible_after)
        else:
            first_end = trial.probe_speech[0][1]
            out.took_over = any(a.start < offset and a.end > first_end for a in player.audible)
            a_start_ms, b_start_ms = trial.probe_speech_mic_ms[0][0], trial.probe_speech_mic_ms[-1][0]
            out.turn_cut_in_pause = any(
                e.name == "vad" and e.data.get("type") == "speech_end"
                and a_start_ms < float(e.data.get("end_ms") or 0) <= b_start_ms for e in ev)
        return out

    # Two-stage: the probe was spoken while the lead reply played. "Playing" is the reply being in progress
    # (audio queued, or more to come: no reply_end yet), not the speaker being loud at that instant: on a
    # loaded machine chunks can arrive late and the player underruns for a moment.
    old = next((r for t, r in reversed(_reply_starts(ev)) if t <= onset), None)
    if old is None or not _in_progress(ev, old, onset):
        out.valid, out.invalid_reason = False, "assistant not speaking at the probe's onset"
        return out
    stop = next((e for e in ev if e.name in ("pause", "interrupt") and e.t >= onset
                 and e.data.get("reply_id") == old), None)
    silenced = stop is not None and _in_progress(ev, old, stop.t)
    out.stop_cause = stop.name if silenced and stop is not None else "reply_ended"
    if silenced and stop is not None:
        # the player stops on arrival (pause keeps the queue, interrupt empties it): silent from then on
        out.stop_latency_ms = (stop.t - onset) * 1000
    resume = next((e for e in ev if e.name == "resume" and e.t >= onset and e.data.get("reply_id") == old), None)
    later_old = [a for a in player.audible if a.reply_id == old and resume is not None and a.start >= resume.t]
    out.resumed = bool(later_old)
    if later_old and stop is not None:
        out.resume_gap_ms = (later_old[0].start - stop.t) * 1000
    new_rid = next((r for t, r in _reply_starts(ev) if t >= onset and r != old), None)
    new_heard = new_rid is not None and any(a.reply_id == new_rid for a in player.audible)
    out.took_over = new_heard
    if cat == "backchannel":
        out.false_interruption = silenced
    elif new_heard and new_rid is not None:
        first = _first_audio(ev, new_rid)
        if first is not None:
            out.response_latency_ms = (first - offset) * 1000
    return out
