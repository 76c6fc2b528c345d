"""The whole VITA-1.5 multimodal LLM in plain torch (transformers' Qwen2 for the text part).

Used for parity against the reference goldens, for loader checks (every key consumed; full-size
geometry on the meta device) and for tower benchmarks. The served path is ``vllm_patches.model``;
both share the towers and the weight-name table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from vllm_patches.audio_tower import AudioPath
from vllm_patches.geometry import AudioGeometry, VisionGeometry
from vllm_patches.vision_tower import VisionPath
from vllm_patches.weights import is_skipped, iter_checkpoint, module_name


def text_config_of(cfg: Mapping[str, Any]) -> Qwen2Config:
    """The Qwen2 config of a vLLM-side VITA config dict."""
    return Qwen2Config(**{k: v for k, v in cfg["text_config"].items() if k != "model_type"})


class VitaTorchModel(nn.Module):
    """Vision path + audio path + Qwen2, with the reference's placeholder merge."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        text = text_config_of(cfg)
        self.image_token_index = int(cfg["image_token_index"])
        self.audio_token_index = int(cfg["audio_token_index"])
        geo = VisionGeometry.from_config(cfg["vision_config"], float(cfg.get("downsample_ratio", 0.5)))
        self.vision = VisionPath(geo, text.hidden_size)
        self.audio = AudioPath(AudioGeometry.from_config(cfg["audio_config"]), text.hidden_size)
        self.language_model = Qwen2ForCausalLM(text)

    def merge_embeddings(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                         audio_clips: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``embed_tokens(ids)`` with image rows, then audio rows, overwritten in order (counts must match)."""
        embeds = self.language_model.get_input_embeddings()(input_ids).clone()
        for token, rows in ((self.image_token_index, self._image_rows(pixel_values)),
                            (self.audio_token_index, self._audio_rows(audio_clips))):
            slots = input_ids == token
            if int(slots.sum()) != rows.shape[0]:
                raise ValueError(f"placeholder {token}: {int(slots.sum())} slots for {rows.shape[0]} embeddings")
            embeds[slots] = rows.to(embeds.dtype)
        return embeds

    def _image_rows(self, pixel_values: torch.Tensor | None) -> torch.Tensor:
        if pixel_values is None:
            return torch.zeros(0, self.language_model.config.hidden_size)
        return self.vision(pixel_values).flatten(0, 1)

    def _audio_rows(self, clips: list[torch.Tensor] | None) -> torch.Tensor:
        if not clips:
            return torch.zeros(0, self.language_model.config.hidden_size)
        return torch.cat(self.audio.embed_clips(clips))

    def final_hidden(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Qwen2 output after the final RMSNorm for one sequence ``[L, H]`` at positions 0…L−1."""
        out = self.language_model.model(inputs_embeds=inputs_embeds.unsqueeze(0))
        return out.last_hidden_state[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden @ lm_head.weightᵀ`` (what vLLM's logits processor computes)."""
        return self.language_model.lm_head(hidden)


@dataclass
class LoadReport:
    """What a load consumed: every checkpoint key must map to exactly one parameter."""

    consumed: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)


def load_torch_model(folder: Path, cfg: Mapping[str, Any], dtype: torch.dtype = torch.float32
                     ) -> tuple[VitaTorchModel, LoadReport]:
    """Build the model from ``cfg`` and load the released safetensors of ``folder`` (strict)."""
    model = VitaTorchModel(cfg).to(dtype).eval()
    params = dict(model.state_dict())
    report = LoadReport()
    for key, tensor in iter_checkpoint(Path(folder)):
        if is_skipped(key):
            report.skipped.add(key)
            continue
        name = module_name(key)
        if name not in params:
            raise KeyError(f"checkpoint key {key!r} maps to {name!r}, which the model does not have")
        if params[name].shape != tensor.shape:
            raise ValueError(f"{key}: checkpoint shape {tuple(tensor.shape)} != model {tuple(params[name].shape)}")
        with torch.no_grad():
            params[name].copy_(tensor.to(dtype))
        report.consumed.add(name)
    report.missing = set(params) - report.consumed
    if report.missing:
        raise KeyError(f"parameters missing from the checkpoint: {sorted(report.missing)[:10]}")
    return model, report
