"""Audio → 80-bin Kaldi fbank → global CMVN, as the VITA-1.5 reference (docs/model.md, "Audio features").

The reference calls ``torchaudio.compliance.kaldi.fbank`` on the waveform scaled by 32768. torchaudio is
not installable here (CUDA builds), so this module re-states that computation in the same torch float32
operations, which reproduces the reference goldens bitwise. The maintained ``kaldi-native-fbank`` library
was measured too: it differs by up to 1.07e-3 (log units) at near-silent bins, just above the 1e-3
tolerance of the parity goldens, so it is not used. Dither is 0: inference must be deterministic.

This is the model side only: the engine checks user audio first (``engine.llm.media.validate_waveform``,
typed errors); here a clip that cannot become a single token is a plain ``ValueError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SAMPLE_RATE = 16_000
FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
FFT_SIZE = 512
NUM_MEL_BINS = 80
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
PCM_SCALE = 32768.0
MIN_SAMPLES = 1360
"""Shortest audio giving one LLM token (7 fbank frames); shorter audio is rejected."""
MAX_AUDIO_SECONDS = 60.0
"""Longer audio is clamped to its last ``MAX_AUDIO_SECONDS`` (the end of an utterance matters most)."""


@dataclass(frozen=True, slots=True)
class Cmvn:
    """Global cepstral mean/variance normalisation stats of the checkpoint (80 means, 80 inverse stds)."""

    means: np.ndarray
    istds: np.ndarray

    def __post_init__(self) -> None:
        for name in ("means", "istds"):
            arr = getattr(self, name)
            if arr.shape != (NUM_MEL_BINS,) or not np.all(np.isfinite(arr)):
                raise ValueError(f"CMVN {name} must be {NUM_MEL_BINS} finite numbers, got shape {arr.shape}")

    @classmethod
    def from_lists(cls, means: list[float], istds: list[float]) -> Cmvn:
        """Build from the JSON lists of ``feature_extractor/preprocessor_config.json`` (cast to float32)."""
        return cls(np.asarray(means, dtype=np.float32), np.asarray(istds, dtype=np.float32))

    @classmethod
    def from_kaldi_stats(cls, mean_stat: list[float], var_stat: list[float], frame_num: float) -> Cmvn:
        """Build from a WeNet ``global_cmvn`` file: sums and sums of squares over ``frame_num`` frames."""
        mean = np.asarray(mean_stat, dtype=np.float64) / frame_num
        var = np.maximum(np.asarray(var_stat, dtype=np.float64) / frame_num - mean**2, 1e-20)
        return cls(mean.astype(np.float32), (1.0 / np.sqrt(var)).astype(np.float32))


def num_fbank_frames(num_samples: int) -> int:
    """Kaldi frame count with ``snip_edges``: ``1 + (N − 400) // 160`` (0 below one frame)."""
    return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


def num_audio_tokens_from_frames(frames: int) -> int:
    """LLM tokens for ``frames`` fbank frames: conv ×4 subsampling, then the stride-2 adapter."""
    encoder_frames = ((frames - 1) // 2 - 1) // 2
    return 0 if encoder_frames <= 0 else (encoder_frames - 1) // 2 + 1


def num_audio_tokens(num_samples: int) -> int:
    """LLM tokens for a clip of ``num_samples`` at 16 kHz, after the documented clamp."""
    return num_audio_tokens_from_frames(num_fbank_frames(min(num_samples, max_audio_samples())))


def max_audio_samples() -> int:
    """Samples kept of an over-long clip."""
    return int(MAX_AUDIO_SECONDS * SAMPLE_RATE)


def clamp_waveform(waveform: np.ndarray) -> np.ndarray:
    """The documented length clamp: the last ``MAX_AUDIO_SECONDS`` of a clip, as float32."""
    return np.asarray(waveform)[-max_audio_samples():].astype(np.float32, copy=False)


def _mel_banks() -> torch.Tensor:
    """Kaldi triangular mel filters [80, 257] on the ``1127·ln(1 + f/700)`` scale (last column zero)."""
    def mel(freq: float) -> float:
        return 1127.0 * math.log(1.0 + freq / 700.0)

    num_fft_bins = FFT_SIZE // 2
    mel_low, mel_high = mel(LOW_FREQ), mel(SAMPLE_RATE / 2)
    delta = (mel_high - mel_low) / (NUM_MEL_BINS + 1)
    index = torch.arange(NUM_MEL_BINS).unsqueeze(1)
    left = mel_low + index * delta
    center = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    fft_mel = 1127.0 * (1.0 + (SAMPLE_RATE / FFT_SIZE) * torch.arange(float(num_fft_bins)) / 700.0).log()
    fft_mel = fft_mel.unsqueeze(0)
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    banks = torch.max(torch.zeros(1), torch.min(up, down))
    return torch.nn.functional.pad(banks, (0, 1))


_MEL_BANKS = _mel_banks()
_POVEY_WINDOW = torch.hann_window(FRAME_LENGTH, periodic=False, dtype=torch.float32).pow(0.85)
_LOG_FLOOR = torch.tensor(torch.finfo(torch.float32).eps)


def kaldi_fbank(waveform: np.ndarray) -> np.ndarray:
    """Log mel filterbank [T, 80] of a float waveform in [-1, 1] (scaled by 32768 first, as the reference)."""
    x = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)) * PCM_SCALE
    frames_count = num_fbank_frames(x.numel())
    if frames_count == 0:
        return np.zeros((0, NUM_MEL_BINS), np.float32)
    frames = x.as_strided((frames_count, FRAME_LENGTH), (FRAME_SHIFT, 1))
    frames = frames - frames.mean(dim=1, keepdim=True)  # per-frame DC removal
    previous = torch.nn.functional.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)[:, :-1]
    frames = (frames - PREEMPHASIS * previous) * _POVEY_WINDOW
    frames = torch.nn.functional.pad(frames, (0, FFT_SIZE - FRAME_LENGTH))
    power = torch.fft.rfft(frames).abs().pow(2.0)
    energies = torch.mm(power, _MEL_BANKS.T)
    return torch.max(energies, _LOG_FLOOR).log().numpy()


def apply_cmvn(fbank: np.ndarray, cmvn: Cmvn) -> np.ndarray:
    """``(fbank − means) · istds`` in float32."""
    return ((fbank - cmvn.means) * cmvn.istds).astype(np.float32, copy=False)


def waveform_to_features(waveform: np.ndarray, cmvn: Cmvn) -> np.ndarray:
    """The full audio path: clamp → fbank → CMVN; returns float32 [T, 80] with T ≥ 7 (at least one token)."""
    wave = np.asarray(waveform)
    if wave.ndim != 1 or wave.size < MIN_SAMPLES:
        raise ValueError(f"audio must be a mono clip of ≥ {MIN_SAMPLES} samples, got shape {wave.shape}")
    return apply_cmvn(kaldi_fbank(clamp_waveform(wave)), cmvn)
