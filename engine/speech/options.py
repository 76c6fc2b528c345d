"""Every option of the speech head, typed, with its default, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine.speech.streaming import StreamingOptions
from engine.speech.text_front import ClauseOptions

StreamMode = Literal["fast", "reference"]


@dataclass(frozen=True, slots=True)
class ReferenceStreamOptions:
    """The public demo's chunker settings (docs/model.md, "Reference chunker"), for ``reference`` mode."""

    first_chunk_codes: int = 20
    later_chunk_codes: int = 40
    padding_codes: int = 10
    first_threshold: float = 0.1
    later_threshold: float = 0.015
    window: int = 2401
    trim_first_below: float | None = 0.03
    """The demo trims leading samples with |x| ≤ this from every segment of a reply's first sentence."""


@dataclass(frozen=True, slots=True)
class SpeechOptions:
    """Speech-head behaviour: sampling, length caps, streaming schedule and clause splitting."""

    top_k: int = 2
    """Codes are drawn from the renormalised top-k (the demo's ``decoder_topk``)."""
    max_codes: int = 1000
    """Hard cap on codes per clause (1000 = 25 s), as in the reference."""
    max_seconds_per_token: float = 1.5
    """A clause of N tokens stops after ``40 · 1.5 · N + 40`` codes even without EOS (runaway guard)."""
    batch_sessions: bool = True
    """Run the AR steps of sessions decoding at the same moment as one batched step (no lock, one
    read of the weights per step); ``False``: each session steps on its own, still without a lock."""
    stream_mode: StreamMode = "fast"
    """``fast``: the project's 10-code first chunk; ``reference``: the demo's 30/50-code chunker."""
    streaming: StreamingOptions = field(default_factory=StreamingOptions)
    reference: ReferenceStreamOptions = field(default_factory=ReferenceStreamOptions)
    clauses: ClauseOptions = field(default_factory=ClauseOptions)
    trust_checkpoint_pickles: bool = False
    """The ``vita_tts_ckpt`` ``final.pt`` files are read without arbitrary unpickling: tensors, plain
    containers and a short allow-list of training bookkeeping (numpy scalars, ``argparse.Namespace``; see
    ``engine.speech.checkpoint``). A file holding any other pickled object is refused with an error naming
    it. ``True`` unpickles such a file in full instead (logged as a WARNING naming the file): pickles can run
    code, so set it only for files from a source you trust."""

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.max_codes < 1 or self.max_seconds_per_token <= 0:
            raise ValueError("top_k and max_codes must be >= 1 and max_seconds_per_token > 0")
        if self.stream_mode not in ("fast", "reference"):
            raise ValueError(f"unknown stream_mode {self.stream_mode!r}")
