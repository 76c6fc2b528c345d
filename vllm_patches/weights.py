"""Released VITA-1.5 checkpoint names → our module names (one table, used by vLLM and plain torch).

The release stores everything under the HF ``VITAQwen2ForCausalLM`` names (docs/model.md, "Checkpoint
keys"). We load those files unchanged and rename by prefix; the more specific prefixes come first. The
vLLM model wraps this table in a ``WeightsMapper``; the plain-torch model calls :func:`module_name`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

CMVN_PREFIX = "model.audio_encoder.encoder.global_cmvn."
"""CMVN buffers: consumed as the feature extractor's statistics, never loaded into a module."""

CHECKPOINT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.vision_tower.vision_tower.", "vision.vision_tower."),
    ("model.mm_projector.0.", "vision.vision_projector.linear_1."),
    ("model.mm_projector.2.", "vision.vision_projector.linear_2."),
    ("model.audio_encoder.encoder.enc.0.core.conv.0.", "audio.encoder.subsampling.conv1."),
    ("model.audio_encoder.encoder.enc.0.core.conv.2.", "audio.encoder.subsampling.conv2."),
    ("model.audio_encoder.encoder.enc.0.core.out.0.", "audio.encoder.subsampling.out."),
    ("model.audio_encoder.encoder.enc.1.embed.0.", "audio.encoder.embed_linear."),
    ("model.audio_encoder.encoder.enc.1.embed.1.", "audio.encoder.embed_norm."),
    ("model.audio_encoder.encoder.enc.1.encoders.", "audio.encoder.layers."),
    ("model.audio_encoder.encoder.enc.1.after_norm.", "audio.encoder.final_norm."),
    ("model.audio_encoder.adpter.conv1d2.", "audio.adapter.conv."),
    ("model.audio_encoder.adpter.bn2.", "audio.adapter.norm."),
    ("model.audio_encoder.adpter.project.", "audio.adapter.linear."),
    ("model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)


def is_skipped(checkpoint_key: str) -> bool:
    """Keys present in the release but not module weights (CMVN stats, rotary caches)."""
    return checkpoint_key.startswith(CMVN_PREFIX) or "rotary_emb.inv_freq" in checkpoint_key


def module_name(checkpoint_key: str) -> str:
    """The module parameter name of a released checkpoint key; ``KeyError`` for an unknown family."""
    for old, new in CHECKPOINT_PREFIXES:
        if checkpoint_key.startswith(old):
            return new + checkpoint_key[len(old):]
    raise KeyError(f"unknown checkpoint key family: {checkpoint_key!r}")


def safetensors_files(folder: Path) -> list[Path]:
    """The weight shards of a checkpoint folder: those named by the index, else every ``*.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def iter_checkpoint(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Every ``(key, tensor)`` of a checkpoint folder's safetensors, lazily, shard by shard."""
    from safetensors import safe_open

    for path in safetensors_files(folder):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                yield key, f.get_tensor(key)
