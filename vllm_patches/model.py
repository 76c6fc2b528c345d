"""VITA-1.5 as a vLLM model: vLLM's own Qwen2 and InternViT, plus VITA's shuffle, projector and whale.

The vision tower is vLLM's in-tree ``InternVisionModel`` (same parameter names as the release, tensor
parallel, vLLM's encoder attention); VITA's ×0.5 pixel shuffle, the projector and the whale audio
encoder + adapter are the plain-torch modules that the parity model (``vllm_patches.torch_model``) also
uses. Weights load from the released key names through the one rename table of ``vllm_patches.weights``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import PretrainedConfig
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.intern_vit import InternVisionModel
from vllm.model_executor.models.utils import AutoWeightsLoader, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from vllm_patches.audio_tower import AudioPath
from vllm_patches.config import VitaConfig
from vllm_patches.geometry import AudioGeometry, VisionGeometry
from vllm_patches.processing import VitaDummyInputsBuilder, VitaMultiModalProcessor, VitaProcessingInfo
from vllm_patches.vision_tower import VisionPath
from vllm_patches.weights import renamed


def _split(value: object, sizes: list[int]) -> list[torch.Tensor]:
    """vLLM passes flat fields either concatenated or as a list; return one tensor per item."""
    if isinstance(value, torch.Tensor):
        return list(torch.split(value, sizes))
    return list(value)  # type: ignore[arg-type]


def _sizes(value: object) -> list[int]:
    return [int(v) for v in (value.tolist() if isinstance(value, torch.Tensor) else value)]  # type: ignore[union-attr]


@MULTIMODAL_REGISTRY.register_processor(
    VitaMultiModalProcessor, info=VitaProcessingInfo, dummy_inputs=VitaDummyInputsBuilder)
class VitaDuplexForConditionalGeneration(nn.Module, SupportsMultiModal):
    """Qwen2 LLM with image and audio embeddings scattered into their placeholder rows."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return "<image>"
        if modality.startswith("audio"):
            return "<audio>"
        raise ValueError(f"unsupported modality {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        cfg: VitaConfig = vllm_config.model_config.hf_config
        self.config = cfg
        hidden = cfg.text_config.hidden_size
        with self._mark_tower_model(vllm_config, "image"):
            geo = VisionGeometry.from_config(cfg.vision_config, cfg.downsample_ratio)
            vit_config = PretrainedConfig(**{"initializer_factor": 1.0, **cfg.vision_config})
            tower = InternVisionModel(vit_config, vllm_config.quant_config, num_hidden_layers_override=geo.num_layers,
                                      prefix=maybe_prefix(prefix, "vision.vision_tower"))
            self.vision = VisionPath(geo, hidden, tower=tower)
        with self._mark_tower_model(vllm_config, "audio"):
            self.audio = AudioPath(AudioGeometry.from_config(cfg.audio_config), hidden)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=cfg.text_config,
                prefix=maybe_prefix(prefix, "language_model"), architectures=["Qwen2ForCausalLM"])
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        # vLLM calls this once per modality group, so image and audio never arrive together.
        if kwargs.get("pixel_values") is not None:
            sizes = _sizes(kwargs["image_num_tiles"])
            dtype = self.vision.vision_projector.linear_1.weight.dtype
            tiles = torch.cat(_split(kwargs["pixel_values"], sizes)).to(dtype)
            per_tile = self.vision(tiles)
            return [t.flatten(0, 1) for t in torch.split(per_tile, sizes)]
        if kwargs.get("audio_features") is not None:
            sizes = _sizes(kwargs["audio_num_frames"])
            dtype = self.audio.adapter.linear.weight.dtype
            clips = [c.to(dtype) for c in _split(kwargs["audio_features"], sizes)]
            return self.audio.embed_clips(clips)
        return []

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(renamed(weights))
