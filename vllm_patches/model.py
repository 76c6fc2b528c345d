"""VITA-1.5 as a vLLM model: vLLM's own Qwen2 and InternViT, plus VITA's shuffle, projector and whale.

The vision tower is vLLM's in-tree ``InternVisionModel`` (same parameter names as the release, tensor
parallel, vLLM's encoder attention); VITA's ×0.5 pixel shuffle, the projector and the whale audio
encoder + adapter are the plain-torch modules that the parity model (``vllm_patches.torch_model``) also
uses. Weights load from the released key names through the one rename table of ``vllm_patches.weights``
(as ``hf_to_vllm_mapper``). Multimodal inputs arrive as ``TensorSchema``-validated tensors, as in vLLM's
in-tree models; their preprocessing is the plugin's own (``processing.py``), so nothing here imports the
server engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal, cast

import torch
from torch import nn
from transformers import PretrainedConfig
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.intern_vit import InternVisionModel
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors
from vllm.utils.tensor_schema import TensorSchema, TensorShape

from vllm_patches.audio_tower import AudioPath
from vllm_patches.config import VitaConfig
from vllm_patches.geometry import AudioGeometry, VisionGeometry
from vllm_patches.processing import VitaDummyInputsBuilder, VitaMultiModalProcessor, VitaProcessingInfo
from vllm_patches.vision_tower import VisionPath
from vllm_patches.weights import CHECKPOINT_PREFIXES, is_skipped


class VitaImagePixelInputs(TensorSchema):
    """Dimensions:
    - bn: Number of images
    - bnp: Number of tiles of all images (each image's grid, then its thumbnail)
    - h: Height of a tile
    - w: Width of a tile
    """

    type: Literal["pixel_values"] = "pixel_values"
    pixel_values: Annotated[torch.Tensor, TensorShape("bnp", 3, "h", "w")]
    num_tiles: Annotated[torch.Tensor, TensorShape("bn")]


class VitaAudioFeatureInputs(TensorSchema):
    """Dimensions:
    - na: Number of audio clips
    - naf: Number of fbank frames of all clips
    - nmb: Number of mel bins
    """

    type: Literal["audio_features"] = "audio_features"
    audio_features: Annotated[torch.Tensor, TensorShape("naf", "nmb")]
    num_frames: Annotated[torch.Tensor, TensorShape("na")]


def _check_sizes(name: str, sizes: torch.Tensor, total: int) -> list[int]:
    """Per-item sizes of a flat field, which must add up to its leading dimension."""
    counts = [int(n) for n in sizes.tolist()]
    if sum(counts) != total or min(counts, default=1) < 1:
        raise ValueError(f"{name}: per-item sizes {counts} do not split {total} rows")
    return counts


@MULTIMODAL_REGISTRY.register_processor(
    VitaMultiModalProcessor, info=VitaProcessingInfo, dummy_inputs=VitaDummyInputsBuilder)
class VitaDuplexForConditionalGeneration(nn.Module, SupportsMultiModal):
    """Qwen2 LLM with image and audio embeddings scattered into their placeholder rows."""

    # Released key families → our module names; vLLM applies every matching prefix in turn, which equals
    # the first-match rename of ``weights.module_name`` because no new name starts with an old prefix.
    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix=dict(CHECKPOINT_PREFIXES))

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return "<image>"
        if modality.startswith("audio"):
            return "<audio>"
        raise ValueError(f"unsupported modality {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        cfg = cast(VitaConfig, vllm_config.model_config.hf_config)
        self.config = cfg
        hidden = cfg.text_config.hidden_size
        with self._mark_tower_model(vllm_config, "image"):
            geo = VisionGeometry.from_config(cfg.vision_config, cfg.downsample_ratio)
            vit_config = PretrainedConfig(**{"initializer_factor": 1.0, **cfg.vision_config})
            tower = InternVisionModel(vit_config, vllm_config.quant_config, num_hidden_layers_override=geo.num_layers,
                                      prefix=maybe_prefix(prefix, "vision.vision_tower"))
            self.vision = VisionPath(geo, hidden, tower=tower)
        with self._mark_tower_model(vllm_config, "audio"):
            self.audio_geometry = AudioGeometry.from_config(cfg.audio_config)
            self.audio = AudioPath(self.audio_geometry, hidden)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=cfg.text_config,
                prefix=maybe_prefix(prefix, "language_model"), architectures=["Qwen2ForCausalLM"])
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def _parse_and_validate_image_input(self, **kwargs: object) -> VitaImagePixelInputs | None:
        pixel_values = kwargs.pop("pixel_values", None)
        if pixel_values is None:
            return None
        side = self.vision.geo.image_size
        return VitaImagePixelInputs(pixel_values=pixel_values, num_tiles=kwargs.pop("image_num_tiles", None),
                                    resolve_bindings={"h": side, "w": side})

    def _parse_and_validate_audio_input(self, **kwargs: object) -> VitaAudioFeatureInputs | None:
        features = kwargs.pop("audio_features", None)
        if features is None:
            return None
        return VitaAudioFeatureInputs(audio_features=features, num_frames=kwargs.pop("audio_num_frames", None),
                                      resolve_bindings={"nmb": self.audio_geometry.input_dim})

    def _process_image_input(self, image_input: VitaImagePixelInputs) -> list[torch.Tensor]:
        pixels = image_input.pixel_values
        sizes = _check_sizes("pixel_values", image_input.num_tiles, pixels.shape[0])
        per_tile = self.vision(pixels.to(self.vision.vision_projector.linear_1.weight.dtype))
        return [tiles.flatten(0, 1) for tiles in torch.split(per_tile, sizes)]

    def _process_audio_input(self, audio_input: VitaAudioFeatureInputs) -> list[torch.Tensor]:
        feats = audio_input.audio_features
        sizes = _check_sizes("audio_features", audio_input.num_frames, feats.shape[0])
        clips = torch.split(feats.to(self.audio.adapter.linear.weight.dtype), sizes)
        return self.audio.embed_clips(list(clips))

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        # vLLM calls this once per modality group; should both ever arrive, keep the order of ``kwargs``.
        embeddings: list[torch.Tensor] = []
        for key in kwargs:
            if key == "pixel_values":
                images = self._parse_and_validate_image_input(**kwargs)
                embeddings += self._process_image_input(images) if images is not None else []
            elif key == "audio_features":
                clips = self._parse_and_validate_audio_input(**kwargs)
                embeddings += self._process_audio_input(clips) if clips is not None else []
        return embeddings

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: object) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        model: Any = self.language_model.model  # vLLM's Qwen2Model (nn.Module attribute access types as Tensor)
        return model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        language_model: Any = self.language_model
        return language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        kept = ((key, tensor) for key, tensor in weights if not is_skipped(key))  # CMVN stats are no weights
        return AutoWeightsLoader(self).load_weights(kept, mapper=self.hf_to_vllm_mapper)
