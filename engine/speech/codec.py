"""The TiCodec vocoder's decoder side: codebook lookup + HiFi-GAN-style generator, 600 samples per code.

Weight-normed convolutions are folded to plain weights at load (docs/model.md, "Codec"), so inference runs
ordinary ``Conv1d`` / ``ConvTranspose1d`` layers. The encoder stored in the released file is not needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.speech.checkpoint import (
    LoadReport,
    as_state_dict,
    fold_all_weight_norms,
    freeze_for_inference,
    load_strict,
    read_torch_file,
)
from engine.speech.config import CodecConfig
from engine.speech.errors import SpeechCheckpointError, SpeechInputError

LATENT_DIM = 512
"""Width of a code's latent vector (hard-coded in the reference quantizer and generator)."""
GLOBAL_DIM = 128
"""Width of the concatenated global-token (voice) vector."""
LRELU_SLOPE = 0.1


class ResBlock1(nn.Module):
    """Three (dilated conv, conv) residual pairs with leaky ReLUs in front of each conv."""

    def __init__(self, channels: int, kernel: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class Generator(nn.Module):
    """Latent [B, 512, T] + global vector [B, 128] → waveform [B, 1, T · prod(upsample_rates)]."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        c0 = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(LATENT_DIM, c0, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        widths = []
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)):
            if (kernel - rate) % 2:
                raise SpeechCheckpointError(f"codec stage {i}: kernel {kernel} - rate {rate} must be even")
            c_in, c_out = c0 // 2**i, c0 // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(c_in, c_out, kernel, rate, padding=(kernel - rate) // 2))
            for k, dil in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True):
                self.resblocks.append(ResBlock1(c_out, k, dil))
            widths.append(c_out)
        # The voice vector is added after the stage whose width equals it (stage 1 in the released
        # model, stage 0 in the tiny one): a rule on widths, not a fixed stage index.
        self.global_stages = [w == GLOBAL_DIM for w in widths]
        self.conv_post = nn.Conv1d(widths[-1], 1, 7, padding=3)

    def forward(self, latent: torch.Tensor, voice: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(latent)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
            if self.global_stages[i]:
                x = x + voice[:, :, None]
        return torch.tanh(self.conv_post(F.leaky_relu(x, LRELU_SLOPE)))


class _Codebook(nn.Module):
    def __init__(self, entries: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(entries, dim)


class Quantizer(nn.Module):
    """Code → latent codebook, plus one small codebook per global (voice) token."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        n_global = len(cfg.global_tokens)
        if GLOBAL_DIM % n_global:
            raise SpeechCheckpointError(f"{n_global} global tokens do not split the {GLOBAL_DIM}-d voice vector")
        self.quantizer_modules = nn.ModuleList([_Codebook(cfg.n_codes, LATENT_DIM)])
        self.quantizer_modules_globaltokens = nn.ModuleList(
            _Codebook(cfg.n_codes, GLOBAL_DIM // n_global) for _ in range(n_global)
        )


class Codec(nn.Module):
    """Decodes code sequences to 24 kHz float waveforms with the checkpoint's fixed voice."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.quantizer = Quantizer(cfg)
        freeze_for_inference(self)

    @classmethod
    def from_files(cls, folder: Path, trust_pickles: bool = False) -> tuple[Codec, LoadReport]:
        """Load ``folder/model.json`` + ``folder/final.pt`` (``generator`` and ``quantizer``; any encoder is skipped)."""
        cfg = CodecConfig.from_json(folder / "model.json")
        model = cls(cfg)
        path = folder / "final.pt"
        raw = read_torch_file(path, trust_pickles)
        if not isinstance(raw, dict):
            raise SpeechCheckpointError(f"{path}: expected a dict with 'generator' and 'quantizer'")
        gen, origins = fold_all_weight_norms(as_state_dict(raw, path, "generator"), path)
        quant = as_state_dict(raw, path, "quantizer")
        gen_report = load_strict(model.generator, {k: v.float() for k, v in gen.items()}, path, origins=origins)
        q_report = load_strict(model.quantizer, {k: v.float() for k, v in quant.items()}, path)
        report = LoadReport(
            consumed=tuple(f"generator.{k}" for k in gen_report.consumed)
            + tuple(f"quantizer.{k}" for k in q_report.consumed),
            skipped=tuple(k for k in raw if k not in ("generator", "quantizer")),
            unexpected=tuple(f"generator.{k}" for k in gen_report.unexpected)
            + tuple(f"quantizer.{k}" for k in q_report.unexpected),
        )
        return model, report

    @property
    def samples_per_code(self) -> int:
        """600 at 24 kHz in the released model."""
        return self.cfg.samples_per_code

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.generator.conv_pre.weight.device

    def voice_vector(self) -> torch.Tensor:
        """The fixed global-token vector [1, 128]: the eight codebook rows concatenated in order."""
        rows = [
            cast(nn.Embedding, book.embedding).weight[token]
            for book, token in zip(self.quantizer.quantizer_modules_globaltokens, self.cfg.global_tokens, strict=True)
        ]
        return torch.cat(rows)[None]

    @torch.inference_mode()
    def decode(self, codes: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """Whole-sequence decode of codes in ``[0, n_codes)`` → float32 waveform of 600·T samples."""
        ids = torch.as_tensor(np.asarray(codes, dtype=np.int64)).to(self.device)
        if ids.dim() != 1 or ids.numel() == 0:
            raise SpeechInputError("codec input must be a non-empty 1-D code sequence")
        if int(ids.min()) < 0 or int(ids.max()) >= self.cfg.n_codes:
            raise SpeechInputError(f"codes must lie in [0, {self.cfg.n_codes})")
        latent = cast(nn.Embedding, self.quantizer.quantizer_modules[0].embedding).weight[ids].T[None]
        wave = self.generator(latent, self.voice_vector())
        return wave[0, 0].float().cpu().numpy()
