"""Per-reply synthesis: tagging, determinism, cancellation, masking, caps, bad text, concurrency."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.interface import AudioChunk
from engine.speech import (
    ReferenceStreamOptions,
    ReplySynthesizer,
    SpeechHead,
    SpeechInputError,
    SpeechOptions,
    synthesize_text,
)
from engine.speech.sampler import CodeSampler

TEXT = "Hello there, this is a slightly longer test sentence. It is spoken in clauses"


def _pcm(chunks: list[AudioChunk]) -> np.ndarray:
    return np.concatenate([np.frombuffer(c.pcm, "<i2") for c in chunks])


def test_chunks_are_tagged_and_all_text_is_spoken(head: SpeechHead, tokenizer) -> None:
    synth = head.new_reply("r1", 7, tokenizer, seed=1)
    for word in TEXT.split(" "):
        synth.push_text(word + " ")
    synth.end_text()
    chunks = list(synth.chunks())
    assert chunks and all(c.reply_id == "r1" and c.epoch == 7 for c in chunks)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    # The trailing clause has no final punctuation and is still spoken.
    assert synth.spoken_text[-1] == "It is spoken in clauses"
    assert synth.spoken_text[0] == "Hello there,"
    assert synth.codes_before_first_audio is not None and synth.codes_before_first_audio <= 10
    assert np.isfinite(_pcm(chunks).astype(np.float64)).all()


def test_same_seed_same_audio_and_other_seed_differs(head: SpeechHead, tokenizer) -> None:
    a = _pcm(synthesize_text(head, TEXT, tokenizer, seed=5))
    b = _pcm(synthesize_text(head, TEXT, tokenizer, seed=5))
    c = _pcm(synthesize_text(head, TEXT, tokenizer, seed=6))
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_cancel_stops_decoding_within_one_ar_step(head: SpeechHead) -> None:
    cancelled = threading.Event()
    cond = head.table.conditioning([5, 6, 7])
    sampler = CodeSampler(2, head.mask, seed=0)
    steps_before = []
    codes = head.generate_codes(cond, sampler, 1000, cancelled)
    state_steps = []
    original_step = head.decoder.step

    def counting_step(state, token):
        state_steps.append(token)
        return original_step(state, token)

    head.decoder.step = counting_step  # instance attribute: shadows the method for this test only
    try:
        got = []
        for code in codes:
            got.append(code)
            if len(got) == 3:
                steps_before.append(len(state_steps))
                cancelled.set()
        assert len(got) == 3
        assert len(state_steps) == steps_before[0]  # no AR step ran after the cancel
    finally:
        del head.decoder.step


def test_cancel_from_another_thread_ends_chunks(head: SpeechHead, tokenizer) -> None:
    synth = head.new_reply("r", 1, tokenizer, seed=0)
    got: list[AudioChunk] = []

    def consume() -> None:
        for chunk in synth.chunks():
            got.append(chunk)
            synth.cancel()

    worker = threading.Thread(target=consume)
    worker.start()
    synth.push_text("A first clause, and then a much longer second one that would take a while to say. " * 3)
    worker.join(timeout=60)
    assert not worker.is_alive()  # chunks() returned although end_text was never called
    assert len(got) == 1 and synth.cancelled


def test_undecodable_ids_are_never_sampled(head: SpeechHead) -> None:
    cfg = head.decoder.cfg
    logits = torch.zeros(cfg.vocab)
    logits[[cfg.bos, cfg.sos, cfg.pad]] = 50.0  # the model "wants" an id the codec cannot decode
    logits[17] = 1.0
    sampler = CodeSampler(2, head.mask, seed=0)
    picks = {sampler.sample(logits) for _ in range(50)}
    assert picks <= set(range(cfg.odim)) | {cfg.eos}
    assert 17 in picks
    nan = torch.full((cfg.vocab,), float("nan"))
    assert sampler.sample(nan) == cfg.eos  # a broken forward pass ends the utterance, never noise


def test_eos_ends_and_length_cap_bounds_a_clause(head: SpeechHead) -> None:
    cond = head.table.conditioning([1, 2, 3, 4])
    lengths = [len(list(head.generate_codes(cond, CodeSampler(2, head.mask, s), 1000))) for s in range(12)]
    assert min(lengths) < 1000  # the tiny model reaches EOS
    assert all(n <= 7 for n in (len(list(head.generate_codes(cond, CodeSampler(2, head.mask, s), 7))) for s in range(5)))
    assert head.code_cap(1) == 100 and head.code_cap(1000) == 1000
    with pytest.raises(SpeechInputError, match="too long"):
        head.decoder.start(head.table.conditioning(list(range(600))), 1000)


def test_bad_text_is_silent_or_a_typed_error(head: SpeechHead, tokenizer) -> None:
    assert synthesize_text(head, "", tokenizer) == []
    assert synthesize_text(head, "?!... ,,,", tokenizer) == []
    assert synthesize_text(head, "😀🎉👍", tokenizer) == []
    odd = synthesize_text(head, "\x00\x07 Ω∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \ufffd!", tokenizer, seed=0)
    assert odd and np.isfinite(_pcm(odd).astype(float)).all()
    synth = head.new_reply("r", 0, None)
    synth.push_text("no tokenizer here.")
    synth.end_text()
    with pytest.raises(SpeechInputError, match="tokenizer"):
        list(synth.chunks())
    with pytest.raises(SpeechInputError, match="after end_text"):
        synth.push_text("more")


def test_five_thousand_character_reply(tts_dir: Path, llm_dir: Path, tokenizer) -> None:
    fast = SpeechHead.from_checkpoint(tts_dir, llm_dir, device="cpu", options=SpeechOptions(max_codes=12))
    text = ("Numbers like 3.14 and words like important stay intact, even in long replies. " * 70)[:5000]
    synth = fast.new_reply("long", 0, tokenizer, seed=0)
    synth.push_text(text)
    synth.end_text()
    chunks = list(synth.chunks())
    assert len(synth.spoken_text) >= 20
    assert all(len(c) <= fast.options.clauses.max_units for c in synth.spoken_text)
    assert "".join(synth.spoken_text).replace(" ", "") == text.replace(" ", "")
    assert chunks and np.isfinite(_pcm(chunks).astype(float)).all()


def _two_clause_reply(head: SpeechHead) -> tuple[ReplySynthesizer, list[AudioChunk]]:
    synth = head.new_reply("ids", 2, seed=3)
    synth.push_token_ids([10, 20, 30, 40])
    synth.push_token_ids([11, 21, 31])
    synth.end_text()
    return synth, list(synth.chunks())


@pytest.mark.parametrize("mode", ["fast", "reference"])
def test_token_ids_api_and_both_stream_modes_keep_every_sample(tts_dir: Path, llm_dir: Path, mode: str) -> None:
    ref = ReferenceStreamOptions(trim_first_below=None) if mode == "reference" else None
    synth, chunks = _two_clause_reply(SpeechHead.from_checkpoint(tts_dir, llm_dir, device="cpu", reference=ref))
    assert all(c.reply_id == "ids" and c.epoch == 2 for c in chunks)
    codes = synth.spoken_codes
    assert len(codes) == 2 and all(0 <= c < 1024 for clause in codes for c in clause)
    assert sum(c.num_samples for c in chunks) == 600 * sum(len(clause) for clause in codes)
    if mode == "reference" and len(codes[0]) >= 30:
        assert synth.codes_before_first_audio >= 30


def test_reference_mode_trims_quiet_starts_of_the_first_clause(tts_dir: Path, llm_dir: Path) -> None:
    ref = ReferenceStreamOptions(trim_first_below=0.99)
    synth, chunks = _two_clause_reply(SpeechHead.from_checkpoint(tts_dir, llm_dir, device="cpu", reference=ref))
    # Nothing in the tiny model's first clause exceeds 0.99: all trimmed; the second clause is untouched.
    assert sum(c.num_samples for c in chunks) == 600 * len(synth.spoken_codes[1])


def test_concurrent_sessions_do_not_share_state(tts_dir: Path, llm_dir: Path, tokenizer) -> None:
    # Unbatched so that the comparison can be bitwise (batched steps agree to ~1e-6, test_speech_batching).
    head = SpeechHead.from_checkpoint(tts_dir, llm_dir, device="cpu", options=SpeechOptions(batch_sessions=False))
    texts = {f"s{i}": f"Session {i} says hello, and then something else." for i in range(3)}
    solo = {rid: _pcm(synthesize_text(head, t, tokenizer, reply_id=rid, seed=i)) for i, (rid, t) in enumerate(texts.items())}
    together: dict[str, np.ndarray] = {}

    def run(i: int, rid: str, text: str) -> None:
        together[rid] = _pcm(synthesize_text(head, text, tokenizer, reply_id=rid, seed=i))

    threads = [threading.Thread(target=run, args=(i, rid, t)) for i, (rid, t) in enumerate(texts.items())]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for rid in texts:
        np.testing.assert_array_equal(together[rid], solo[rid])
