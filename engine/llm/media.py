"""User media checked before it reaches the model: typed errors for audio and images nobody can serve.

The model-side preprocessing (fbank + CMVN, tiling, token counts) lives in the vLLM plugin
(``vllm_patches.audio_features``, ``vllm_patches.image_preprocess``); these are the server-side limits
in front of it, raising :class:`AudioInputError` / :class:`ImageInputError` for the caller's input.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.llm.errors import AudioInputError, ImageInputError
from vllm_patches.audio_features import MIN_SAMPLES, SAMPLE_RATE, clamp_waveform

SILENCE_PEAK = 1e-4
"""Audio whose peak magnitude is below this (≈ −80 dBFS) is rejected as silent."""
MIN_IMAGE_SIDE = 2
"""Smaller images are rejected: a 1-pixel side carries no picture (documented limit)."""


def validate_waveform(waveform: np.ndarray) -> np.ndarray:
    """Check a mono 16 kHz clip and apply the length clamp; typed errors for unusable audio."""
    wave = np.asarray(waveform)
    if wave.ndim != 1:
        raise AudioInputError(f"audio must be mono 1-D, got shape {wave.shape}")
    if not np.issubdtype(wave.dtype, np.floating):
        raise AudioInputError(f"audio must be float samples in [-1, 1], got dtype {wave.dtype}")
    if wave.size < MIN_SAMPLES:
        raise AudioInputError(
            f"audio too short: {wave.size} samples ({wave.size / SAMPLE_RATE:.3f} s); need ≥ {MIN_SAMPLES}")
    if not np.all(np.isfinite(wave)):
        raise AudioInputError("audio contains NaN or infinite samples")
    if float(np.max(np.abs(wave))) < SILENCE_PEAK:
        raise AudioInputError("audio is silent (peak below −80 dBFS)")
    return clamp_waveform(wave)


def decode_image(data: bytes | Image.Image) -> Image.Image:
    """Decode JPEG/PNG bytes (or take a PIL image) as RGB; typed error for corrupt or degenerate input."""
    if isinstance(data, Image.Image):
        image = data
    else:
        if not data:
            raise ImageInputError("image is empty (0 bytes)")
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            raise ImageInputError(f"image could not be decoded: {exc}") from exc
    width, height = image.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageInputError(f"image {width}×{height} is too small (each side must be ≥ {MIN_IMAGE_SIDE} px)")
    return image.convert("RGB")
