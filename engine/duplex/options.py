"""Every option of the duplex controller, typed and documented in one place, with its default.

The attribute docstrings are the help text of ``launch.py --help`` (``server.config`` reads them). The
reply length and the history kept are the LLM's (``LlmOptions.max_new_tokens``, ``history_turns``): one
value each, used by both layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.speech.options import SpeechOptions

Awakening = Literal["model", "always"]


@dataclass(frozen=True, slots=True)
class DuplexOptions:
    """How turns are judged, answered and spoken."""

    awakening: Awakening | None = None
    """Non-awakening policy. 'model': the monitor's first token (☞/☟) decides whether an utterance is for the
    assistant; chatter, TV or a cough judged ☟ gets no reply and does not interrupt (one extra 1-token
    request per utterance, prefix-cached for the answer). 'always': answer every utterance (every background
    voice gets a reply), saving the judgement's latency. Unset: 'model' with --model_path, 'always' for the
    random demo checkpoint, whose verdicts are noise."""
    streaming: bool = True
    """Speak clauses while the LLM still generates; --no-streaming generates the whole answer first, then
    speaks it (the reference demo's way, kept for latency comparisons)."""
    min_utterance_ms: float = 300
    """Utterances shorter than this are judged too short to be speech (no model call, no interruption)."""
    max_frames: int = 2
    """Camera frames per turn, evenly spaced over the utterance (the latest when it has none)."""
    frame_max_side: int = 448
    """Frames are scaled down to this longest side and padded to a square (aspect kept)."""
    tts_seed: int | None = 0
    """Seed of the speech head's code sampler ('none': random)."""
    speech_device: str | None = None
    """Device of the speech head; unset = CUDA when present, else CPU."""
    cpu_threads: int = 1
    """Torch threads for the speech head on CPU (one thread is the fastest there)."""
    speech: SpeechOptions = field(default_factory=SpeechOptions)

    def __post_init__(self) -> None:
        if self.awakening not in (None, "model", "always"):
            raise ValueError(f"awakening must be 'model' or 'always', got {self.awakening!r}")
        if self.max_frames < 0 or self.frame_max_side < 28 or self.min_utterance_ms < 0:
            raise ValueError("max_frames >= 0, frame_max_side >= 28 and min_utterance_ms >= 0 are required")
        if self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be >= 1, got {self.cpu_threads}")
