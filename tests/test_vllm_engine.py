"""The async engine on the tiny checkpoint: streaming, abort, two engines, media, bad input, death."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import signal

import numpy as np
import pytest
from PIL import Image

from engine.llm.engine import Finished, LlmPool, TextChunk
from engine.llm.errors import (
    AudioInputError,
    EngineDeadError,
    ImageInputError,
    InputError,
    PromptTooLongError,
)
from engine.llm.options import LlmOptions
from engine.llm.prompt import ConversationHistory, UserTurn
from vllm_patches.audio_features import num_audio_tokens
from vllm_patches.image_preprocess import plan_tiles

pytestmark = [pytest.mark.vllm]  # async tests share the module loop (pyproject: asyncio_default_test_loop_scope)


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pool(tiny_checkpoint):
    options = LlmOptions(model_path=tiny_checkpoint, num_engines=2, dtype="float32", enforce_eager=True,
                         max_model_len=2048, kv_cache_mb=64, max_new_tokens=64, max_images=3,
                         max_dynamic_patch=2)
    engines = LlmPool(options)
    yield engines
    engines.close()
    del engines
    gc.collect()


@pytest.fixture(scope="module")
def builder(pool):
    return pool.prompt_builder()


async def collect(pool, prompt, rid, **kw):
    return [event async for event in pool.stream(prompt, rid, **kw)]


async def test_two_engines_start_and_report_health(pool) -> None:
    health = pool.health()
    assert health["ok"] and [e["ok"] for e in health["engines"]] == [True, True]
    assert pool.resolved.layout == "release"


async def test_text_turn_streams_deltas_and_timings(pool, builder) -> None:
    prompt = builder.build(UserTurn(text="Hello, what is this?"))
    events = await collect(pool, prompt, "text-1")
    chunks, final = events[:-1], events[-1]
    assert isinstance(final, Finished) and final.reason in ("stop", "length")
    assert all(isinstance(c, TextChunk) for c in chunks) and chunks
    assert final.generated_tokens == sum(len(c.token_ids) for c in chunks)
    assert final.prompt_tokens == len(prompt.token_ids) == prompt.expanded_length
    assert final.time_to_first_token is not None and final.time_to_first_token > 0
    # Greedy decoding is deterministic: the same prompt gives the same text.
    again = await collect(pool, prompt, "text-2")
    assert "".join(c.text for c in again[:-1]) == "".join(c.text for c in chunks)


async def test_state_prefixes_hold_the_first_tokens_then_let_the_reply_run(pool, builder) -> None:
    """The monitor's verdict and the answer are one request (vllm_patches.state_prefix, really loaded)."""
    prompt = builder.build(UserTurn(text="Hello, what is this?"))
    free = [t for c in (await collect(pool, prompt, "free", max_new_tokens=12))[:-1] for t in c.token_ids]
    # Spellings the random model does not pick on its own: made-up two-token sequences of plain bytes.
    a, b = (71, 72), (73, 74)
    assert tuple(free[:2]) not in (a, b)
    for n, choices in enumerate(([a, b], [b])):
        events = await collect(pool, prompt, f"held-{n}", state_prefixes=choices, max_new_tokens=12)
        ids = [t for c in events[:-1] for t in c.token_ids]
        assert tuple(ids[:2]) in choices, ids
        # after the prefix the model samples freely: not the masked ids, and not stuck
        assert len(ids) > 2 and not set(ids[2:]) <= {71, 72, 73, 74}, ids
    with pytest.raises(InputError):
        await collect(pool, prompt, "bad-prefix", state_prefixes=[[]])


async def test_abort_one_of_two_concurrent_streams(pool, builder) -> None:
    prompt = builder.build(UserTurn(text="Tell me a long story."))
    seen: dict[str, list] = {"a": [], "b": []}
    aborted = asyncio.Event()

    async def consume(rid: str, abort_after: int | None) -> None:
        async for event in pool.stream(prompt, rid, max_new_tokens=60, ignore_eos=True):
            seen[rid].append(event)
            if abort_after is not None and isinstance(event, TextChunk) and len(seen[rid]) == abort_after:
                await pool.abort(rid)
                aborted.set()

    await asyncio.gather(consume("a", 3), consume("b", None))
    assert aborted.is_set()
    final_a, final_b = seen["a"][-1], seen["b"][-1]
    assert isinstance(final_a, Finished) and final_a.reason == "abort"
    assert final_a.generated_tokens < 60
    # Nothing after the abort except what was already in flight, and the stream ended with it.
    assert sum(isinstance(e, TextChunk) for e in seen["a"]) <= 4
    assert isinstance(final_b, Finished) and final_b.reason == "length" and final_b.generated_tokens == 60
    assert len({e.name for e in pool.engines}) == 2


@pytest.mark.parametrize(("size", "seconds"), [((448, 448), 1.0), ((640, 360), 3.0), ((1280, 768), 0.1),
                                                ((100, 4000), 7.3), ((900, 900), 60.0)])
async def test_media_turn_expands_to_the_embedding_count(pool, builder, size, seconds) -> None:
    audio = speech(seconds)
    prompt = builder.build(UserTurn(audio=audio, images=(jpeg(*size),)))
    image_tokens = plan_tiles(*size, max_num=2).num_tokens
    assert prompt.expanded_length == len(prompt.token_ids) - 2 + image_tokens + num_audio_tokens(audio.size)
    events = await collect(pool, prompt, f"mm-{size}-{seconds}", max_new_tokens=2)
    assert events[-1].prompt_tokens == prompt.expanded_length  # vLLM placed exactly that many embeddings


async def test_history_keeps_role_headers_and_audio(pool, builder) -> None:
    history = ConversationHistory(max_turns=2)
    first = UserTurn(audio=speech(1.0))
    history.add(first, "I hear a tone.")
    history.add(UserTurn(text="And now?"), "Still a tone.")
    prompt = builder.build(UserTurn(text="Thanks"), history)
    text = pool.engines[0].tokenizer.decode(prompt.token_ids)
    assert text.count("<|im_start|>user\n") == 3 and text.count("<|im_start|>assistant\n") == 3
    assert "☞I hear a tone." in text and "☜Still a tone." in text
    assert len(prompt.audios) == 1
    events = await collect(pool, prompt, "hist", max_new_tokens=2)
    assert events[-1].prompt_tokens == prompt.expanded_length


def test_bad_inputs_are_typed_errors(builder) -> None:
    with pytest.raises(AudioInputError, match="NaN"):
        builder.build(UserTurn(audio=np.full(16000, np.nan, np.float32)))
    with pytest.raises(AudioInputError, match="silent"):
        builder.build(UserTurn(audio=np.zeros(16000, np.float32)))
    with pytest.raises(AudioInputError, match="short"):
        builder.build(UserTurn(audio=np.zeros(0, np.float32)))
    with pytest.raises(ImageInputError, match="decoded"):
        builder.build(UserTurn(images=(jpeg(64, 64)[:40],)))
    with pytest.raises(ImageInputError, match="too small"):
        builder.build(UserTurn(images=(jpeg(1, 1),)))
    with pytest.raises(ImageInputError, match="at most 3"):
        builder.build(UserTurn(images=(jpeg(64, 64),) * 4))
    with pytest.raises(PromptTooLongError):
        builder.build(UserTurn(text="hello " * 3000))
    with pytest.raises(InputError, match="empty"):
        builder.build(UserTurn())


def test_history_is_trimmed_to_the_budget(builder) -> None:
    history = ConversationHistory(max_turns=50)
    for i in range(50):
        history.add(UserTurn(text=f"question {i} " * 20), f"answer {i} " * 20)
    prompt = builder.build(UserTurn(text="last"), history)
    assert 0 < prompt.history_used < 50 and prompt.expanded_length <= builder.budget


async def test_dead_engine_is_reported_and_the_other_keeps_serving(pool, builder) -> None:
    victim = pool.engines[1]
    core = victim._llm.engine_core.resources.engine_manager.processes[0]
    os.kill(core.pid, signal.SIGKILL)  # a process this test module started
    prompt = builder.build(UserTurn(text="Are you there?"))
    with pytest.raises(EngineDeadError):
        async for _ in victim.stream(prompt, "dead-1", max_new_tokens=8):
            pass
    with pytest.raises(EngineDeadError, match="restart"):
        async for _ in victim.stream(prompt, "dead-2"):
            pass
    assert victim.health()["ok"] is False
    events = await collect(pool, prompt, "alive", max_new_tokens=4)
    assert isinstance(events[-1], Finished) and pool.health()["ok"]
