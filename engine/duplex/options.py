"""Every option of the duplex controller, typed and documented in one place, with its default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.llm.prompt import NOT_ADDRESSED, SPOKEN
from engine.speech.options import SpeechOptions

Awakening = Literal["model", "always"]


@dataclass(frozen=True, slots=True)
class DuplexOptions:
    """How turns are judged, answered and spoken."""

    awakening: Awakening = "model"
    """Non-awakening policy. ``model`` (default): the monitor's first token decides; utterances judged ☟
    (not addressed: chatter, TV, a cough) get no reply and do not interrupt. Costs one extra 1-token
    request per utterance (prefix-cached for the answer) and trusts the model, which may miss a quiet or
    indirect question. ``always``: every utterance is answered and interrupts (no wake-word-free
    filtering; every background voice gets a reply), saving the judgement's latency."""
    judge_states: tuple[str, ...] = (SPOKEN, NOT_ADDRESSED)
    """State tokens the monitor may produce as its first token (sampling is restricted to them).
    Tests narrow it to one token to force a verdict through the sampling parameters."""
    streaming: bool = True
    """Speak clauses while the LLM still generates. ``False`` = the reference demo: the whole answer is
    generated first, then spoken (kept for the latency comparison in ``bench/bench_duplex.py``)."""
    min_utterance_ms: float = 300
    """Utterances shorter than this are judged too short to be speech (no model call, no interruption)."""
    max_frames: int = 2
    """Camera frames per turn, evenly spaced over the utterance (the latest when it has none)."""
    frame_max_side: int = 448
    """Frames are scaled down to this longest side and padded to a square (aspect kept)."""
    history_turns: int = 4
    """Exchanges kept per conversation (frames of past turns are never kept)."""
    max_new_tokens: int | None = None
    """Reply length cap; ``None`` = the LLM options' ``max_new_tokens``."""
    tts_seed: int | None = 0
    """Seed of the speech head's code sampler (``None``: random)."""
    speech_device: str | None = None
    """Device of the speech head (``None``: CUDA when present, else CPU)."""
    cpu_threads: int = 1
    """Torch threads for the speech head on CPU (one thread is the fastest there)."""
    speech: SpeechOptions = field(default_factory=SpeechOptions)

    def __post_init__(self) -> None:
        if self.awakening not in ("model", "always"):
            raise ValueError(f"awakening must be 'model' or 'always', got {self.awakening!r}")
        if not self.judge_states or any(s not in (SPOKEN, NOT_ADDRESSED) for s in self.judge_states):
            raise ValueError(f"judge_states must be a non-empty subset of ☞ ☟, got {self.judge_states!r}")
        if self.max_frames < 0 or self.frame_max_side < 28 or self.min_utterance_ms < 0:
            raise ValueError("max_frames >= 0, frame_max_side >= 28 and min_utterance_ms >= 0 are required")
