"""Streaming vocoder: first audio after 10 codes, streamed ≈ whole decoding, no clicks; PCM16 output.

Tolerances (stated in engine/speech/streaming.py and the report): once past the first window and its
crossfade, the streamed waveform equals whole-utterance decoding within 1e-3 absolute (the windows carry
10 codes of context on both sides; typical error ~1e-5). Inside the first window (5 codes + 5 codes of
look-ahead) the codec sees less right context: error ≤ 5 % of the waveform's peak. At every window edge the
sample-to-sample step differs from the whole decode's step at the same place by ≤ 0.02 and never exceeds
the largest step of the whole decode.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.speech import SpeechHead
from engine.speech.pcm import to_pcm16
from engine.speech.streaming import ReferenceChunker, StreamingOptions, StreamingVocoder

SPC = 600


@pytest.fixture(scope="module")
def codes() -> list[int]:
    return [int(c) for c in np.random.default_rng(11).integers(0, 1024, 160)]


def _stream(chunker: StreamingVocoder | ReferenceChunker, codes: list[int]) -> tuple[np.ndarray, list[int]]:
    segments, arrivals = [], []
    for i, code in enumerate(codes, start=1):
        for seg in chunker.push(code):
            segments.append(seg)
            arrivals.append(i)
    segments += chunker.finish()
    return np.concatenate(segments), arrivals


def test_first_audio_after_ten_codes_against_thirty_in_reference(head: SpeechHead, codes: list[int]) -> None:
    fast = StreamingVocoder(head.codec.decode, SPC)
    _, arrivals = _stream(fast, codes)
    assert arrivals[0] == fast.codes_before_first_audio == 10
    ref = ReferenceChunker(head.codec.decode, SPC, chunk_codes=20, padding_codes=10, seg_threshold=1.0)
    _, ref_arrivals = _stream(ref, codes)
    assert ref_arrivals[0] == 30


def test_streamed_matches_whole_decoding_away_from_first_window(head: SpeechHead, codes: list[int]) -> None:
    whole = head.codec.decode(codes)
    opts = StreamingOptions()
    streamed, _ = _stream(StreamingVocoder(head.codec.decode, SPC, opts), codes)
    assert streamed.shape == whole.shape
    settled = opts.first_chunk_codes * SPC + opts.crossfade_samples
    assert np.abs(streamed[settled:] - whole[settled:]).max() <= 1e-3
    assert np.abs(streamed[:settled] - whole[:settled]).max() <= 0.05 * np.abs(whole).max()


def test_no_click_at_window_edges(head: SpeechHead, codes: list[int]) -> None:
    whole = head.codec.decode(codes)
    vocoder = StreamingVocoder(head.codec.decode, SPC)
    streamed, _ = _stream(vocoder, codes)
    assert len(vocoder.window_edges) >= 3
    largest_step = np.abs(np.diff(whole)).max()
    for edge in vocoder.window_edges:
        step = streamed[edge] - streamed[edge - 1]
        assert abs(step) <= largest_step
        assert abs(step - (whole[edge] - whole[edge - 1])) <= 0.02


def test_short_and_empty_utterances(head: SpeechHead) -> None:
    for n in (1, 4, 9, 10, 11):
        v = StreamingVocoder(head.codec.decode, SPC)
        wave, _ = _stream(v, list(range(n)))
        assert wave.shape == (n * SPC,)
        np.testing.assert_allclose(wave, head.codec.decode(list(range(n))), atol=0.05)
    assert StreamingVocoder(head.codec.decode, SPC).finish() == []
    assert ReferenceChunker(head.codec.decode, SPC).finish() == []
    with pytest.raises(ValueError):
        StreamingOptions(first_chunk_codes=0)


def test_pcm16_clips_instead_of_wrapping() -> None:
    wave = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.7, -3.0, np.nan, np.inf, -np.inf], np.float32)
    pcm = np.frombuffer(to_pcm16(wave), "<i2")
    assert pcm.tolist() == [0, 16384, -16384, 32767, -32768, 32767, -32768, 0, 32767, -32768]
    ramp = np.linspace(-2, 2, 10001, dtype=np.float32)
    out = np.frombuffer(to_pcm16(ramp), "<i2").astype(np.int32)
    assert np.all(np.diff(out) >= 0)  # monotonic in, monotonic out: nothing wraps around
