"""Placeholder counts over many image sizes and audio lengths, and bad-input handling of the preprocessors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from engine.llm.checkpoint import resolve_checkpoint
from engine.llm.errors import AudioInputError, ImageInputError
from engine.llm.media import decode_image, validate_waveform
from vllm_patches.audio_features import (
    MAX_AUDIO_SECONDS,
    Cmvn,
    num_audio_tokens,
    num_fbank_frames,
    waveform_to_features,
)
from vllm_patches.image_preprocess import image_to_pixel_values, plan_tiles
from vllm_patches.torch_model import load_torch_model

SIZES = [(2, 2), (3, 500), (448, 448), (640, 360), (360, 640), (896, 896), (1280, 768), (1920, 1080),
         (4000, 100), (100, 4000), (1000, 999), (333, 777), (4000, 3000)]
SECONDS = [0.085, 0.1, 0.5, 1.0, 2.0, 3.0, 3.54, 7.3, 10.0, 30.0, 60.0]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    resolved = resolve_checkpoint(tiny_checkpoint)
    loaded, _ = load_torch_model(tiny_checkpoint, resolved.config)
    return loaded, Cmvn.from_lists(resolved.config["cmvn_means"], resolved.config["cmvn_istds"])


def tone(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * 16000)) / 16000
    return (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


@pytest.mark.parametrize("mdp", [1, 2, 6])
def test_image_token_count_equals_embeddings(model, mdp: int) -> None:
    torch_model, _ = model
    for width, height in SIZES:
        image = Image.new("RGB", (width, height), (10, 200, 30))
        pixels = image_to_pixel_values(image, max_num=mdp)
        plan = plan_tiles(width, height, max_num=mdp)
        with torch.no_grad():
            rows = torch_model.vision(torch.from_numpy(pixels)).flatten(0, 1).shape[0]
        assert rows == plan.num_tokens == 256 * pixels.shape[0], (width, height, mdp)


def test_audio_token_count_equals_embeddings(model) -> None:
    torch_model, cmvn = model
    clips = [torch.from_numpy(waveform_to_features(tone(s), cmvn)) for s in SECONDS]
    with torch.no_grad():
        rows = [e.shape[0] for e in torch_model.audio.embed_clips(clips)]  # one padded batch
    assert rows == [num_audio_tokens(round(s * 16000)) for s in SECONDS]


def test_audio_token_formula_matches_the_spec_checks() -> None:
    assert [num_audio_tokens(int(s * 16000)) for s in (1, 3, 10, 30)] == [12, 37, 124, 374]
    assert num_fbank_frames(56640) == 352 and num_audio_tokens(56640) == 44
    assert num_audio_tokens(1360) == 1 and num_audio_tokens(1359) == 0


def test_audio_bad_inputs_and_documented_clamp() -> None:
    for bad, match in [(np.zeros(0, np.float32), "short"), (tone(0.05), "short"), (np.zeros(16000, np.float32), "silent"),
                       (np.full(16000, np.inf, np.float32), "NaN or infinite"), (tone(1.0).reshape(2, -1), "mono"),
                       (np.ones(16000, np.int16), "float")]:
        with pytest.raises(AudioInputError, match=match):
            validate_waveform(bad)
    nan = tone(1.0)
    nan[100] = np.nan
    with pytest.raises(AudioInputError):
        validate_waveform(nan)
    long = tone(75.0)
    kept = validate_waveform(long)
    assert kept.size == MAX_AUDIO_SECONDS * 16000 and np.array_equal(kept, long[-kept.size:])
    assert num_audio_tokens(long.size) == num_audio_tokens(kept.size)
    assert validate_waveform(tone(0.1)).size == 1600


def test_image_bad_inputs() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buf, "JPEG")
    data = buf.getvalue()
    for bad, match in [(b"", "empty"), (data[: len(data) // 3], "decoded"), (b"not an image", "decoded")]:
        with pytest.raises(ImageInputError, match=match):
            decode_image(bad)
    with pytest.raises(ImageInputError, match="too small"):
        decode_image(Image.new("RGB", (1, 1)))
    assert decode_image(data).size == (64, 48)
    assert decode_image(Image.new("L", (4000, 100))).mode == "RGB"
    with pytest.raises(ValueError, match="max_dynamic_patch"):  # the plugin's tiler: a plain ValueError
        image_to_pixel_values(Image.new("RGB", (8, 8)), max_num=0)
