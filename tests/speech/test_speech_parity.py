"""Parity with the reference implementation's goldens (tiny checkpoints in the released formats)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.speech.codec import Codec
from engine.speech.conditioning import EmbeddingTable
from engine.speech.decoder import SpeechDecoder
from engine.speech.sampler import top_k_distribution, undecodable_mask
from engine.speech.streaming import ReferenceChunker, find_seam

pytestmark = pytest.mark.parity


def _tol(golden: np.ndarray) -> float:
    """README §4: max abs error ≤ 1e-5 × max(1, max|golden|)."""
    return 1e-5 * max(1.0, float(np.abs(golden).max()))


@pytest.fixture(scope="module")
def decoder(parity_dir: Path) -> SpeechDecoder:
    model, report = SpeechDecoder.from_files(parity_dir / "tts_decoder")
    # Every tensor of the file is accounted for: 58 used, the 36 layers_prefix tensors knowingly skipped.
    assert len(report.consumed) == 58 and len(report.skipped) == 36 and report.unexpected == ()
    assert all(k.startswith("layers_prefix.") for k in report.skipped)
    return model


@pytest.fixture(scope="module")
def codec(parity_dir: Path) -> Codec:
    model, report = Codec.from_files(parity_dir / "codec")
    assert len(report.consumed) == 234 + 9 and report.unexpected == () and report.skipped == ()
    return model


@pytest.fixture(scope="module")
def golden(parity_dir: Path):
    g = parity_dir / "tts_decoder" / "golden"
    return lambda name: np.load(g / name)


def test_conditioning_reads_rows_from_llm_safetensors(parity_dir: Path, golden) -> None:
    table = EmbeddingTable.from_checkpoint(parity_dir / "llm_mm")
    ids = golden("text_token_ids.npy").tolist()
    np.testing.assert_array_equal(table.rows(ids).numpy(), golden("text_embeddings.npy"))
    np.testing.assert_array_equal(table.conditioning(ids).numpy(), golden("decoder_input.npy")[0])


def test_nar_prefix_and_teacher_forced_logits(decoder: SpeechDecoder, golden) -> None:
    codes = golden("codes.npy")
    state = decoder.start(torch.from_numpy(golden("decoder_input.npy")[0]), len(codes), keep_debug=True)
    assert state.prefix_length == 25
    pre, prefix = golden("pre_nn_out.npy")[0], golden("prefix_out.npy")[0]
    assert np.abs(state.extra["pre_nn"].numpy() - pre).max() <= _tol(pre)
    assert np.abs(state.extra["prefix"].numpy() - prefix).max() <= _tol(prefix)
    rows, token = [], decoder.cfg.sos
    for code in codes:
        rows.append(decoder.step(state, token))
        token = int(code)
    logits, want = torch.stack(rows).numpy(), golden("ar_logits_teacher_forced.npy")
    assert np.abs(logits - want).max() <= _tol(want)
    mask = undecodable_mask(decoder.cfg, 1024)
    for i, row in enumerate(rows):
        ids, probs = top_k_distribution(row, 2)
        np.testing.assert_array_equal(ids.numpy(), golden("ar_top2_ids.npy")[i])
        np.testing.assert_allclose(probs.numpy(), golden("ar_top2_probs.npy")[i], atol=1e-5, rtol=0)
        # The undecodable-id mask leaves the reference's top-2 untouched on these goldens.
        masked_ids, _ = top_k_distribution(row, 2, mask)
        np.testing.assert_array_equal(masked_ids.numpy(), ids.numpy())


def test_codec_whole_waveforms(codec: Codec, parity_dir: Path) -> None:
    g = parity_dir / "codec" / "golden"
    codes = np.load(g / "codes.npy")
    np.testing.assert_array_equal(np.asarray(codec.cfg.global_tokens), np.load(g / "global_tokens.npy"))
    np.testing.assert_allclose(codec.voice_vector().numpy(), np.load(g / "global_vector.npy"), atol=1e-7, rtol=0)
    for name, n in (("waveform.npy", 100), ("waveform_first60.npy", 60)):
        want = np.load(g / name)[0, 0]
        got = codec.decode(codes[:n])
        assert got.shape == want.shape == (600 * n,)
        assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize("name", ["first_sentence", "later_sentence", "chunk40_thr0.1"])
def test_reference_streaming_mode_reproduces_streamed_chunks(codec: Codec, parity_dir: Path, name: str) -> None:
    g = parity_dir / "codec" / "golden"
    spec = json.loads((g / "meta.json").read_text())["streams"][name]
    kw = spec["run_kwargs"]
    chunker = ReferenceChunker(
        codec.decode, 600, kw["codec_chunk_size"], kw["codec_padding_size"], kw["seg_threshold"], kw["N"]
    )
    segments = [s for c in np.load(g / "codes.npy") for s in chunker.push(int(c))] + chunker.finish()
    assert [len(s) for s in segments] == spec["segments"]
    np.testing.assert_array_equal(
        np.load(g / f"stream_{name}_segment_lengths.npy"), [len(s) for s in segments]
    )
    assert np.abs(np.concatenate(segments) - np.load(g / f"stream_{name}.npy")[0, 0]).max() <= 1e-5
    for decision, want in zip(chunker.decisions, spec["seam_searches"], strict=True):
        assert decision.cut_index == want["cut_index_in_chunk"]
        assert decision.window_start == want["window_start"]
        assert [decision.window_start, decision.search_end] == want["argmin_search_range"]
        assert decision.min_window_mean_abs == pytest.approx(want["min_window_mean_abs"], abs=1e-5)
    # The demo's first sentence needs 30 codes before any sound (architecture.md §2.6).
    if name == "first_sentence":
        assert chunker.codes_before_first_audio == 30


def test_seam_search_end_index_follows_the_reference_quirk() -> None:
    # A quiet window at the end of the second half: the cut may fall up to k + N past the window start.
    chunk = np.full(12000, 0.5, np.float32)
    chunk[9000:11401] = 0.01
    chunk[11900] = 0.0
    decision = find_seam(chunk, 2401, 0.1)
    k = decision.window_start - (6000 - 1200)
    assert decision.search_end == min(12000, decision.window_start + k + 2401)
    assert decision.cut_index == 11900


def test_teacher_forced_logits_in_bf16_the_dtype_served_on_cuda(parity_dir: Path, golden) -> None:
    """bf16 (what the speech head uses on CUDA) stays within a tolerance derived from its rounding.

    bf16 keeps 8 significant bits: unit roundoff u = 2^-8. Each AR step runs ``num_blocks`` blocks of four
    bf16 matmuls (QKV, output, gate/up, down) and the head: 4·B + 1 results rounded, each by at most u
    relative. Adding those bounds linearly (no cancellation assumed) gives (4·B + 1)·u relative to the
    logits' scale, max(1, max|golden|). The top-1 code must match wherever the golden's top-2 margin is
    larger than that tolerance.
    """
    decoder, _ = SpeechDecoder.from_files(parity_dir / "tts_decoder")
    decoder.to(torch.bfloat16)
    codes, want = golden("codes.npy"), golden("ar_logits_teacher_forced.npy")
    state = decoder.start(torch.from_numpy(golden("decoder_input.npy")[0]), len(codes))
    rows, token = [], decoder.cfg.sos
    for code in codes:
        rows.append(decoder.step(state, token).float())
        token = int(code)
    logits = torch.stack(rows).numpy()
    tolerance = (4 * decoder.cfg.num_blocks + 1) * 2.0**-8 * max(1.0, float(np.abs(want).max()))
    assert np.abs(logits - want).max() <= tolerance
    top2 = np.sort(want, axis=-1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > tolerance
    np.testing.assert_array_equal(logits.argmax(-1)[clear], want.argmax(-1)[clear])
    assert clear.sum() >= len(codes) // 4  # the check is not vacuous (random weights: many near-ties)
