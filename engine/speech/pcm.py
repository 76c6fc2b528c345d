"""Float waveform → PCM16 little-endian bytes, clipped (never wrapped) and NaN-safe."""

from __future__ import annotations

import numpy as np

INT16_SCALE = 32768.0


def to_pcm16(wave: np.ndarray) -> bytes:
    """Scale by 32768, round, clip to [-32768, 32767]; NaN/inf become silence/full scale, not noise."""
    x = np.nan_to_num(np.asarray(wave, dtype=np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    pcm = np.clip(np.rint(x * INT16_SCALE), -32768, 32767).astype("<i2")
    return pcm.tobytes()
