"""Every option of the speech head, typed, with its default, in one place.

The attribute docstrings of :class:`SpeechOptions` are the help text of ``launch.py --help``
(``--speech_*``). :class:`ReferenceStreamOptions` is not a production option: tests and the parity checks
hand it to :class:`~engine.speech.head.SpeechHead` to reproduce the public demo's chunker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.speech.streaming import StreamingOptions
from engine.speech.text_front import ClauseOptions


@dataclass(frozen=True, slots=True)
class ReferenceStreamOptions:
    """The public demo's chunker settings (docs/model.md, "Reference chunker"); tests and parity checks only."""

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
    streaming: StreamingOptions = field(default_factory=StreamingOptions)
    clauses: ClauseOptions = field(default_factory=ClauseOptions)
    # The command line's name has no speech_ prefix (it was an option before the speech group existed).
    trust_checkpoint_pickles: bool = field(default=False, metadata={"name": "trust_checkpoint_pickles"})
    """The ``vita_tts_ckpt`` ``final.pt`` files are read without arbitrary unpickling: tensors, plain
    containers and a short allow-list of training bookkeeping (numpy scalars, ``argparse.Namespace``; see
    ``engine.speech.checkpoint``). A file holding any other pickled object is refused with an error naming
    it. ``True`` unpickles such a file in full instead (logged as a WARNING naming the file): pickles can run
    code, so set it only for files from a source you trust."""

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.max_codes < 1 or self.max_seconds_per_token <= 0:
            raise ValueError("top_k and max_codes must be >= 1 and max_seconds_per_token > 0")
