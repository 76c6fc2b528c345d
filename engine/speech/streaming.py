"""Turning a growing code sequence into audio segments while it is still being generated.

Two chunkers share one interface (``push`` a code, ``finish`` at EOS; both return the waveform segments
that became ready):

* :class:`ReferenceChunker` reproduces the public demo's ``llm2TTS.run`` exactly (window sizes, context
  handling and the seam search, with its end-of-range quirk: docs/model.md, "Reference chunker"). It needs 30
  codes before the first sound for a first sentence and 50 otherwise.
* :class:`StreamingVocoder` is the project's default: a short first window (10 codes with the default
  options), windows that grow afterwards, left context + right look-ahead around every window, and a
  short crossfade where two windows meet so that no boundary adds a click.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Decode = Callable[[Sequence[int]], np.ndarray]
"""Whole-sequence codec decode: codes → float32 waveform of ``samples_per_code`` samples per code."""


@dataclass(frozen=True, slots=True)
class SeamDecision:
    """Outcome of one seam search over a decoded chunk."""

    min_window_mean_abs: float
    window_start: int
    search_end: int
    cut_index: int | None
    """Where the chunk is cut (``None``: the chunk is kept whole in the buffer)."""


def find_seam(chunk: np.ndarray, window: int, threshold: float) -> SeamDecision:
    """The reference's ``find_min_sum_index``: the quietest ``window`` in the chunk's second half.

    If its mean |x| is below ``threshold`` the cut falls at the smallest |x| in
    ``[w, min(L, w + k + window))`` (the reference's end index, see the module docstring).
    """
    a = np.abs(np.asarray(chunk, dtype=np.float32))
    length = a.shape[0]
    s0 = length // 2 - window // 2
    if length - window < s0 or s0 < 0:
        return SeamDecision(float("inf"), 0, 0, None)  # too short to search: keep buffering
    csum = np.concatenate(([0.0], np.cumsum(a, dtype=np.float64)))
    sums = csum[window:] - csum[:-window]  # sums[k] = Σ a[k : k + window]
    k = int(np.argmin(sums[s0:]))
    start = s0 + k
    end = min(length, start + k + window)
    mean = float(sums[start] / window)
    if mean >= threshold:
        return SeamDecision(mean, start, end, None)
    cut = start + int(np.argmin(a[start:end]))
    return SeamDecision(mean, start, end, cut)


class ReferenceChunker:
    """The demo's streaming mode (chunk c, look-ahead r, 2r codes of carried context, seam search)."""

    def __init__(
        self,
        decode: Decode,
        samples_per_code: int,
        chunk_codes: int = 40,
        padding_codes: int = 10,
        seg_threshold: float = 0.015,
        window: int = 2401,
    ) -> None:
        self._decode = decode
        self._spc = samples_per_code
        self.chunk_codes, self.padding_codes = chunk_codes, padding_codes
        self.seg_threshold, self.window = seg_threshold, window
        self._codes: list[int] = []
        self._left = 0
        self._buffer = np.zeros(0, np.float32)
        self.decisions: list[SeamDecision] = []
        self.codes_before_first_audio: int | None = None
        self._seen = 0

    def push(self, code: int) -> list[np.ndarray]:
        """Add one code; returns the segments it completed (often none)."""
        self._codes.append(code)
        self._seen += 1
        if len(self._codes) != self._left + self.chunk_codes + self.padding_codes:
            return []
        wave = self._decode(self._codes)
        chunk = wave[self._spc * self._left : self._spc * (len(self._codes) - self.padding_codes)]
        self._left = self.padding_codes
        self._codes = self._codes[-(self._left + self.padding_codes) :]
        decision = find_seam(chunk, self.window, self.seg_threshold)
        self.decisions.append(decision)
        if decision.cut_index is None:
            self._buffer = np.concatenate((self._buffer, chunk))
            return []
        out = np.concatenate((self._buffer, chunk[: decision.cut_index]))
        self._buffer = chunk[decision.cut_index :]
        return self._emit(out)

    def finish(self) -> list[np.ndarray]:
        """EOS: decode what is left and flush the buffer."""
        if not self._codes:
            return self._emit(self._buffer) if self._buffer.size else []
        tail = self._decode(self._codes)[self._spc * self._left :]
        self._codes = []
        return self._emit(np.concatenate((self._buffer, tail)))

    def _emit(self, segment: np.ndarray) -> list[np.ndarray]:
        if self.codes_before_first_audio is None and segment.size:
            self.codes_before_first_audio = self._seen
        return [segment] if segment.size else []


@dataclass(frozen=True, slots=True)
class StreamingOptions:
    """Window schedule of :class:`StreamingVocoder` (all in codes; 1 code = 25 ms at 24 kHz)."""

    first_chunk_codes: int = 5
    """Codes emitted by the first window."""
    first_lookahead_codes: int = 5
    """Look-ahead of the first window: first audio after ``first_chunk + first_lookahead`` = 10 codes."""
    max_chunk_codes: int = 40
    """Windows double in size after the first, up to this many codes."""
    lookahead_codes: int = 10
    """Right look-ahead of every later window (the codec is non-causal)."""
    left_context_codes: int = 10
    """Already-emitted codes decoded again in front of each window."""
    crossfade_samples: int = 480
    """Overlap where the previous window's estimate fades into the next one (20 ms)."""

    def __post_init__(self) -> None:
        if min(self.first_chunk_codes, self.max_chunk_codes) < 1 or self.first_lookahead_codes < 0:
            raise ValueError("chunk sizes must be >= 1 code and look-ahead >= 0")
        if self.left_context_codes < 0 or self.lookahead_codes < 0 or self.crossfade_samples < 0:
            raise ValueError("context, look-ahead and crossfade must be >= 0")


class StreamingVocoder:
    """Streams codec audio with a small first window and crossfaded, context-padded later windows.

    Measured on the tiny checkpoint (tests/speech/test_speech_streaming.py): past the first window and
    its crossfade the stream equals whole-utterance decoding within 1e-3 absolute (typically ~1e-5: every
    later window has 10 codes of context on both sides); inside the first window, whose look-ahead is
    only 5 codes, within 5 % of the waveform peak. Window edges add no step larger than the whole
    decode's own (and within 0.02 of the whole decode's step at the same sample).
    """

    def __init__(self, decode: Decode, samples_per_code: int, options: StreamingOptions | None = None) -> None:
        self._decode = decode
        self._spc = samples_per_code
        self.options = options or StreamingOptions()
        self._codes: list[int] = []
        self._done = 0  # codes whose audio is emitted (up to the held crossfade tail)
        self._tail = np.zeros(0, np.float32)  # previous window's estimate of the next samples to emit
        self._next_chunk = self.options.first_chunk_codes
        self._lookahead = self.options.first_lookahead_codes
        self.codes_before_first_audio: int | None = None
        self.window_edges: list[int] = []
        """Sample indices where one window's output meets the next (for seam checks)."""
        self._emitted = 0

    def push(self, code: int) -> list[np.ndarray]:
        """Add one code; returns the new audio once a window and its look-ahead are complete."""
        self._codes.append(code)
        if len(self._codes) < self._done + self._next_chunk + self._lookahead:
            return []
        end = self._done + self._next_chunk
        segment = self._window(end, end + self._lookahead)
        self._done = end
        self._next_chunk = min(2 * self._next_chunk, self.options.max_chunk_codes)
        self._lookahead = self.options.lookahead_codes
        return self._emit(segment)

    def finish(self) -> list[np.ndarray]:
        """EOS: decode the remaining codes with whatever context exists and flush."""
        if len(self._codes) <= self._done:
            return []  # only possible with zero look-ahead, where no tail is held either
        segment = self._window(len(self._codes), len(self._codes))
        self._done = len(self._codes)
        return self._emit(segment)

    def _window(self, end: int, decode_end: int) -> np.ndarray:
        """Audio for codes [done, end): decoded with context, crossfaded with the held tail."""
        first = max(0, self._done - self.options.left_context_codes)
        wave = self._decode(self._codes[first:decode_end])
        offset = (self._done - first) * self._spc
        stop = (end - first) * self._spc
        fade = min(self._tail.size, stop - offset)
        fresh = wave[offset:stop].copy()
        if fade:
            ramp = (np.arange(1, fade + 1, dtype=np.float32) / (fade + 1)).astype(np.float32)
            fresh[:fade] = self._tail[:fade] * (1.0 - ramp) + fresh[:fade] * ramp
        # Hold back the look-ahead's first samples: the next window fades from them to its own estimate.
        self._tail = wave[stop : stop + self.options.crossfade_samples].copy()
        return fresh

    def _emit(self, segment: np.ndarray) -> list[np.ndarray]:
        if not segment.size:
            return []
        if self.codes_before_first_audio is None:
            self.codes_before_first_audio = len(self._codes)
        if self._emitted:
            self.window_edges.append(self._emitted)
        self._emitted += segment.size
        return [segment]
