"""Tunable VAD / end-of-turn settings, with their defaults in one place."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

SAMPLE_RATE = 16_000
"""The only rate the segmenter accepts (Silero's 16 kHz model)."""

WINDOW = 512
"""Samples per Silero window at 16 kHz (32 ms); the model is trained on exactly this size."""

CONTEXT = 64
"""Samples of the previous window prepended to each window (without them the model outputs ~0)."""


def _opt(default: float, help_text: str) -> float:
    return field(default=default, metadata={"help": help_text})


@dataclass(frozen=True, slots=True)
class VadOptions:
    """How speech is found and cut into utterances. All durations are counted in samples of audio."""

    threshold: float = _opt(0.5, "speech probability at or above which a window counts as speech")
    neg_threshold: float = _opt(
        0.35, "probability below which a window counts as silence (hysteresis; between the two keeps the state)"
    )
    min_speech_ms: float = _opt(
        160, "speech must last this long before 'speech start' is announced (filters clicks and coughs)"
    )
    end_silence_ms: float = _opt(
        500, "silence after speech that ends the user's turn, counted from where the voice stopped; the "
        "decision falls on the next 32 ms window boundary, so it comes 0-32 ms after this much silence"
    )
    end_refine_db: float = _opt(
        35, "the voice counts as stopped where 8 ms frames fall this many dB below the utterance's loud level "
        "(95th percentile over its last second); Silero's probability lags the real end by 1-3 windows "
        "(45-105 ms on the fixtures). 0 = take Silero's end as it is"
    )
    answer_ahead_ms: float = _opt(
        150, "after this much silence (counted like end_silence_ms) the turn is answered ahead of the end-of-turn "
        "decision: the engine judges it and prepares the answer's first audio while the silence runs on; the "
        "client gets nothing until the decision, and the work is dropped if the user goes on speaking. Costs "
        "model work on pauses inside a sentence; 0 (or end_silence_ms and above) = off: work starts at the "
        "decision"
    )
    preroll_ms: float = _opt(300, "audio kept before the detected speech start, inside the utterance")
    postroll_ms: float = _opt(100, "audio kept after the detected speech end, inside the utterance")
    max_utterance_s: float = _opt(30, "an utterance is cut (and handed over) once it reaches this length")

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.neg_threshold <= self.threshold:
            raise ValueError(f"neg_threshold must be in [0, threshold], got {self.neg_threshold}")
        for f in fields(self):
            if f.name.endswith(("_ms", "_s")) and getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be >= 0, got {getattr(self, f.name)}")
        if self.max_utterance_s * 1000 <= self.min_speech_ms:
            raise ValueError("max_utterance_s must be longer than min_speech_ms")

    @staticmethod
    def samples(ms: float) -> int:
        """Milliseconds to a whole number of 16 kHz samples."""
        return round(ms * SAMPLE_RATE / 1000)
