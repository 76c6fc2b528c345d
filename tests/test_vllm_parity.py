"""The served model through vLLM matches the reference on the ``llm_mm`` parity checkpoint (demo layout)."""

from __future__ import annotations

import gc
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.llm.checkpoint import resolve_checkpoint
from engine.llm.engine import LlmEngine
from engine.llm.options import LlmOptions

pytestmark = [pytest.mark.vllm, pytest.mark.parity]


@pytest.fixture(scope="module")
def mm(parity_dir: Path) -> Path:
    return parity_dir / "llm_mm"


@pytest.fixture(scope="module")
def engine(mm: Path):
    resolved = resolve_checkpoint(mm, max_dynamic_patch=1)
    assert resolved.layout == "demo" and not resolved.has_tokenizer
    options = LlmOptions(model_path=mm, num_engines=1, dtype="float32", enforce_eager=True, max_model_len=2048,
                         kv_cache_memory_bytes=64 << 20, max_new_tokens=16, max_images=2)
    served = LlmEngine(resolved, options)
    yield served
    served.close()
    del served
    gc.collect()


async def test_served_logprobs_match_reference_logits(engine: LlmEngine, mm: Path, parity_dir: Path) -> None:
    from vllm import SamplingParams

    meta = json.loads((mm / "golden" / "meta.json").read_text())
    with wave.open(str(parity_dir.parent / "speech" / "question_en.wav")) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    image = Image.open(mm / "golden" / "image.png").convert("RGB")
    request = {"prompt_token_ids": meta["prompt_ids_before_expansion"],
               "multi_modal_data": {"image": image, "audio": audio}}
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=20, logprobs=20, detokenize=False)
    final = None
    async for out in engine.async_llm.generate(request, params, request_id="parity"):
        final = out
    assert final is not None
    # Placeholder expansion: exactly the reference's expanded ids (256 image + 58 audio tokens).
    np.testing.assert_array_equal(np.array(final.prompt_token_ids), np.load(mm / "golden" / "llm_input_ids.npy"))
    golden = torch.log_softmax(torch.from_numpy(np.load(mm / "golden" / "llm_logits_last16.npy")), -1).numpy()
    length = len(final.prompt_token_ids)
    errors = []
    for row in range(15):  # logits row r (position length-16+r) predicts prompt token length-15+r
        for token, lp in final.prompt_logprobs[length - 15 + row].items():
            errors.append(abs(lp.logprob - golden[row, token]))
    for token, lp in final.outputs[0].logprobs[0].items():
        errors.append(abs(lp.logprob - golden[15, token]))
    assert len(errors) >= 16 * 20
    assert max(errors) <= 1e-5 * max(1.0, float(np.abs(golden).max())), max(errors)
    assert final.outputs[0].token_ids == [meta["llm"]["greedy_next_token"]]


async def test_changing_the_image_changes_the_served_logprobs(engine: LlmEngine, mm: Path) -> None:
    """The image rows really are scattered into the placeholder slots."""
    from vllm import SamplingParams

    meta = json.loads((mm / "golden" / "meta.json").read_text())
    ids = [i for i in meta["prompt_ids_before_expansion"] if i != 2001]
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=5, detokenize=False)
    tops = []
    for shade in (0, 255):
        request = {"prompt_token_ids": ids, "multi_modal_data": {"image": Image.new("RGB", (448, 448), (shade,) * 3)}}
        async for out in engine.async_llm.generate(request, params, request_id=f"shade-{shade}"):
            final = out
        tops.append({t: lp.logprob for t, lp in final.outputs[0].logprobs[0].items()})
    shared = set(tops[0]) & set(tops[1])
    assert not shared or max(abs(tops[0][t] - tops[1][t]) for t in shared) > 1e-4 or set(tops[0]) != set(tops[1])
