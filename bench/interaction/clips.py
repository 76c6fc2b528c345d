"""Synthetic interaction clips with ground truth, made locally with Debian's ``espeak-ng`` and ``sox``.

Every scenario of the benchmark is drawn from ``random.Random`` seeded by (seed, category, index), so the same
seed gives the same clips, sample for sample, and adding scenarios to one category does not change another's.
``espeak-ng`` renders each phrase (voice, rate and pitch drawn per clip), ``sox`` resamples it to 16 kHz mono
and makes the noise beds (``sox -R``: repeatable); levels, silences and mixing are done here on samples, so
the speech boundaries are known exactly. Rendered phrases are cached under ``~/.cache/vita-duplex/`` (or
``$VITA_BENCH_CLIP_CACHE``), never in the repository.

Ground truth is measured on the clean (noise-free) speech: espeak-ng writes digital silence around a phrase,
so the first and last 10 ms frames above -45 dB of the phrase's peak are its onset and offset.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MIC = 16_000
CATEGORIES = ("pause", "backchannel", "side_talk", "smooth", "interruption")
"""Scenario kinds, in the order they run."""
TWO_STAGE = ("backchannel", "interruption")
"""Categories whose probe is spoken while the assistant is answering a first request (the lead)."""

VOICES = ("en-us", "en-gb", "en+f3", "en+m3", "en-us+f2", "en-gb-x-rp+m1")
RATES_WPM = (140, 200)
PITCH = (35, 65)
NOISES = ("pinknoise", "brownnoise", "whitenoise")
NOISE_BED_S = 30.0
USER_LEVEL_DBFS = (-26.0, -20.0)
"""Active-speech RMS of the user's voice (the reply audio of the tiny checkpoint is about -22.5 dBFS, so a
barge-in is as loud as the assistant: the echo guard lets it through)."""
SNR_DB = (12.0, 25.0)
SIDE_TALK_BELOW_DB = (6.0, 14.0)
"""A second voice (someone else in the room) this much quieter than the user would be."""
BACKGROUND_SNR_DB = (0.0, 6.0)
"""Speech from a TV or radio, buried this close to the noise floor."""
PAUSE_S = (0.4, 1.5)

REQUESTS = (
    "Could you tell me what the weather will be like tomorrow?",
    "What is the capital city of Australia?",
    "Please explain how a rainbow is formed.",
    "How many minutes should I boil an egg?",
    "Can you recommend a good book about history?",
    "What time does the sun set in winter?",
    "Tell me a short story about a friendly dragon.",
    "Why is the sky blue during the day?",
    "How do I convert miles into kilometres?",
    "What should I cook for dinner tonight?",
    "Which planet is the largest in our solar system?",
    "How far away is the moon from the earth?",
)
PAUSED = (
    ("Could you tell me", "what the weather will be like tomorrow?"),
    ("I would like to know", "how many minutes I should boil an egg."),
    ("What is the name of", "the largest planet in our solar system?"),
    ("Can you recommend", "a good book about history?"),
    ("So, I was wondering", "why the sky is blue during the day."),
    ("Please explain", "how a rainbow is formed."),
    ("How far is it,", "from the earth to the moon?"),
    ("Tell me, um,", "what I should cook for dinner tonight."),
)
BACKCHANNELS = ("uh-huh", "yeah", "mm-hmm", "right", "okay", "I see", "sure")
SIDE_TALK = (
    "Tom, did you remember to pick up the groceries?",
    "Hang on, I'm on the phone, I'll be there in a minute.",
    "Can you turn the music down a little, please?",
    "Mom, where did you put my blue jacket?",
    "I think the meeting was moved to Thursday afternoon.",
    "Did anyone feed the cat this morning?",
)
BACKGROUND = (
    "And in other news, traffic on the main highway is moving slowly this evening.",
    "The home team scored twice in the second half to win the match.",
    "Tomorrow will be cloudy with a chance of light rain in the north.",
    "Stay tuned, after the break we will talk about the new film.",
)
INTERRUPTIONS = (
    "Wait, stop, what about the day after tomorrow?",
    "Sorry, can you say that again more slowly?",
    "Hold on, I meant something else entirely.",
    "No no, tell me about the weekend instead.",
    "Actually, never mind that, what time is it?",
    "Stop, that is not what I asked.",
)


@dataclass(frozen=True, slots=True)
class Span:
    """A stretch of speech, in samples from the start of its clip (end exclusive)."""

    start: int
    end: int

    @property
    def seconds(self) -> tuple[float, float]:
        """(start, end) in seconds."""
        return self.start / MIC, self.end / MIC


@dataclass(frozen=True, slots=True, eq=False)
class Clip:
    """One mic clip: the voice track (float, no noise) and its ground truth.

    ``speech`` are the spans of the voice the category is about (for side talk: the other person's voice).
    ``pcm`` adds the scenario's noise at its level: what a microphone would hear on its own.
    """

    text: str
    voice: str
    rate_wpm: int
    pitch: int
    voice_track: np.ndarray
    """float32 in [-1, 1], 16 kHz: the speech only (scaled to its level), silences included."""
    speech: tuple[Span, ...]
    level_dbfs: float
    """Active-speech RMS of the voice (over ``speech``)."""
    pcm: np.ndarray = field(repr=False)
    """int16: ``voice_track`` + the room noise of its scenario."""

    @property
    def onset(self) -> int:
        """First speech sample."""
        return self.speech[0].start

    @property
    def offset(self) -> int:
        """End of the last speech span (exclusive)."""
        return self.speech[-1].end

    @property
    def seconds(self) -> float:
        """Length of the clip."""
        return self.voice_track.size / MIC


@dataclass(frozen=True, slots=True, eq=False)
class Scenario:
    """One trial: optionally a lead request (to get the assistant talking), then the probe clip."""

    category: str
    index: int
    probe: Clip
    lead: Clip | None
    inject_after_s: float
    """Two-stage only: the probe starts this long after the lead reply's first audio arrived."""
    noise: str
    noise_dbfs: float
    """RMS of the room noise, present the whole time (between clips too)."""
    noise_bed: np.ndarray = field(repr=False)
    """float32, looped by the client; starts at a seeded offset so each scenario hears different noise."""
    pause_s: float | None = None
    variant: str = ""
    """side_talk: ``second_voice`` or ``background``."""

    @property
    def name(self) -> str:
        """``category-index``."""
        return f"{self.category}-{self.index}"

    def describe(self) -> dict:
        """JSON-ready facts of the scenario (no audio)."""
        d: dict = {"name": self.name, "text": self.probe.text, "voice": self.probe.voice,
                   "rate_wpm": self.probe.rate_wpm, "level_dbfs": round(self.probe.level_dbfs, 1),
                   "noise": self.noise, "noise_dbfs": round(self.noise_dbfs, 1),
                   "speech_s": [[round(a, 3), round(b, 3)] for a, b in (s.seconds for s in self.probe.speech)]}
        if self.pause_s is not None:
            d["pause_s"] = round(self.pause_s, 3)
        if self.lead is not None:
            d["lead_text"] = self.lead.text
            d["inject_after_s"] = round(self.inject_after_s, 3)
        if self.variant:
            d["variant"] = self.variant
        return d


class ToolsMissing(RuntimeError):
    """``espeak-ng`` or ``sox`` is not installed."""


def tools_missing() -> list[str]:
    """The clip tools that are not on ``PATH``."""
    return [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]


def cache_dir() -> Path:
    """Where rendered phrases and noise beds are kept (outside the repository)."""
    env = os.environ.get("VITA_BENCH_CLIP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vita-duplex" / "bench-interaction"


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def _read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (MIC, 1, 2), path
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def _cached(key: str, make: Callable[[Path, Path], None], cache: Path) -> np.ndarray:
    """The 16 kHz WAV for ``key`` from ``cache``, made by ``make(path, scratch folder)`` when absent (written atomically:
    two benches sharing the cache never read half a file)."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.wav"
    if not path.is_file():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            part = Path(tmp) / "out.wav"
            make(part, Path(tmp))
            os.replace(part, path)
    return _read_wav(path)


def render(text: str, voice: str, rate_wpm: int, pitch: int, cache: Path | None = None) -> np.ndarray:
    """``text`` spoken by espeak-ng, resampled by sox to 16 kHz mono float32 (cached)."""
    if missing := tools_missing():
        raise ToolsMissing(f"{' and '.join(missing)} not installed (Debian: apt-get install espeak-ng sox)")

    def make(out: Path, tmp: Path) -> None:
        raw = tmp / "espeak.wav"
        _run(["espeak-ng", "-v", voice, "-s", str(rate_wpm), "-p", str(pitch), "-w", str(raw), text])
        _run(["sox", "-R", str(raw), "-r", str(MIC), "-c", "1", "-b", "16", str(out)])

    return _cached(f"tts|{voice}|{rate_wpm}|{pitch}|{text}", make, cache or cache_dir())


def noise_bed(kind: str, cache: Path | None = None) -> np.ndarray:
    """``NOISE_BED_S`` seconds of sox's ``kind`` noise (repeatable), scaled to unit RMS."""

    def make(out: Path, tmp: Path) -> None:
        _run(["sox", "-R", "-n", "-r", str(MIC), "-c", "1", "-b", "16", str(out),
              "synth", str(NOISE_BED_S), kind, "vol", "0.5"])

    bed = _cached(f"noise|{kind}|{NOISE_BED_S}", make, cache or cache_dir())
    return (bed / max(float(np.sqrt(np.mean(bed**2))), 1e-9)).astype(np.float32)


def speech_bounds(x: np.ndarray, floor_db: float = -45.0, frame: int = MIC // 100) -> Span:
    """First and last 10 ms frame of ``x`` whose RMS is within ``floor_db`` of its loudest frame."""
    n = x.size // frame
    rms = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1))
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))
    return Span(int(loud[0] * frame), int((loud[-1] + 1) * frame))


def _active_rms(x: np.ndarray, spans: tuple[Span, ...]) -> float:
    return float(np.sqrt(np.mean(np.concatenate([x[s.start : s.end] for s in spans]) ** 2)))


def _db(x: float) -> float:
    return 10 ** (x / 20)


def _phrase(text: str, voice: str, rate: int, pitch: int, cache: Path | None) -> np.ndarray:
    """The rendered phrase cut to its speech (ground truth then starts at 0 and ends at its length)."""
    x = render(text, voice, rate, pitch, cache)
    b = speech_bounds(x)
    return x[b.start : b.end]


def build_clip(parts: list[str], silences_s: list[float], voice: str, rate: int, pitch: int, level_dbfs: float,
               lead_s: float, tail_s: float, cache: Path | None = None) -> tuple[np.ndarray, tuple[Span, ...]]:
    """Phrases joined by the given silences, with ``lead_s``/``tail_s`` of silence around them, scaled so the
    active speech has RMS ``level_dbfs``. Returns (voice track, speech spans)."""
    pieces = [np.zeros(round(lead_s * MIC), np.float32)]
    spans: list[Span] = []
    at = pieces[0].size
    for i, text in enumerate(parts):
        x = _phrase(text, voice, rate, pitch, cache)
        spans.append(Span(at, at + x.size))
        pieces.append(x)
        at += x.size
        if i < len(silences_s):
            gap = np.zeros(round(silences_s[i] * MIC), np.float32)
            pieces.append(gap)
            at += gap.size
    pieces.append(np.zeros(round(tail_s * MIC), np.float32))
    track = np.concatenate(pieces)
    track *= _db(level_dbfs) / max(_active_rms(track, tuple(spans)), 1e-9)
    return track.astype(np.float32), tuple(spans)


def mix(track: np.ndarray, bed: np.ndarray, noise_dbfs: float, start: int) -> np.ndarray:
    """``track`` plus the (looped) noise bed from sample ``start``, at RMS ``noise_dbfs``, as int16."""
    idx = (start + np.arange(track.size)) % bed.size
    y = track + bed[idx] * _db(noise_dbfs)
    return (np.clip(y, -1, 1) * 32767).astype(np.int16)


def _voice(rng: random.Random) -> tuple[str, int, int]:
    return rng.choice(VOICES), rng.randint(*RATES_WPM), rng.randint(*PITCH)


def _clip(rng: random.Random, parts: list[str], silences: list[float], level: float, bed: np.ndarray,
          noise_dbfs: float, lead_s: float, tail_s: float, cache: Path | None,
          voice: tuple[str, int, int] | None = None) -> Clip:
    v, rate, pitch = voice or _voice(rng)
    track, spans = build_clip(parts, silences, v, rate, pitch, level, lead_s, tail_s, cache)
    pcm = mix(track, bed, noise_dbfs, rng.randrange(bed.size))
    return Clip(" … ".join(parts), v, rate, pitch, track, spans, level, pcm)


def make_scenario(category: str, index: int, seed: int, cache: Path | None = None) -> Scenario:
    """Scenario ``index`` of ``category`` for ``seed`` (the same arguments always give the same clips)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; one of {CATEGORIES}")
    rng = random.Random(f"{seed}:{category}:{index}")
    kind = rng.choice(NOISES)
    bed = noise_bed(kind, cache)
    user_level = rng.uniform(*USER_LEVEL_DBFS)
    noise_dbfs = user_level - rng.uniform(*SNR_DB)
    lead: Clip | None = None
    pause_s: float | None = None
    variant = ""
    inject_after = 0.0
    if category == "smooth":
        probe = _clip(rng, [rng.choice(REQUESTS)], [], user_level, bed, noise_dbfs, 0.3, 0.2, cache)
    elif category == "pause":
        pause_s = rng.uniform(*PAUSE_S)
        probe = _clip(rng, list(rng.choice(PAUSED)), [pause_s], user_level, bed, noise_dbfs, 0.3, 0.2, cache)
    elif category == "side_talk":
        # Alternate so both kinds are in even the quick run: a quieter second person, or buried TV speech.
        variant = "second_voice" if index % 2 == 0 else "background"
        if variant == "second_voice":
            level = user_level - rng.uniform(*SIDE_TALK_BELOW_DB)
            probe = _clip(rng, [rng.choice(SIDE_TALK)], [], level, bed, noise_dbfs, 0.3, 0.2, cache)
        else:
            level = noise_dbfs + rng.uniform(*BACKGROUND_SNR_DB)
            probe = _clip(rng, [rng.choice(BACKGROUND)], [], level, bed, noise_dbfs, 0.3, 0.2, cache)
    else:
        voice = _voice(rng)  # the same person asks, then talks over the answer
        lead = _clip(rng, [rng.choice(REQUESTS)], [], user_level, bed, noise_dbfs, 0.3, 0.2, cache, voice)
        inject_after = rng.uniform(0.3, 1.0)
        phrase = rng.choice(BACKCHANNELS if category == "backchannel" else INTERRUPTIONS)
        # A backchannel is softer than a question; an interruption is said firmly.
        level = user_level - (rng.uniform(2.0, 6.0) if category == "backchannel" else 0.0)
        probe = _clip(rng, [phrase], [], level, bed, noise_dbfs, 0.0, 0.2, cache, voice)
    return Scenario(category, index, probe, lead, inject_after, kind, noise_dbfs, bed, pause_s, variant)


def make_scenarios(seed: int, per_category: int, categories: tuple[str, ...] = CATEGORIES,
                   cache: Path | None = None) -> list[Scenario]:
    """``per_category`` scenarios of each category, in category order."""
    return [make_scenario(c, i, seed, cache) for c in categories for i in range(per_category)]
