"""vLLM multimodal processor of VITA-1.5: our own tiling and fbank, placeholder expansion by token id.

A prompt carries **one** placeholder id per image/audio (``image_token_index`` / ``audio_token_index`` of
the config); vLLM expands the k-th one to 256·tiles(k) or n(audio k) copies (docs/model.md, "Placeholders").
Placeholders are matched as token ids, never as strings: in the real Qwen vocabulary ``<image>`` is not
one token, and the demo inserts the ids directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)
from vllm.multimodal.processing.inputs import ProcessorInputs

from vllm_patches.audio_features import (
    Cmvn,
    max_audio_samples,
    num_audio_tokens,
    num_audio_tokens_from_frames,
    waveform_to_features,
)
from vllm_patches.config import VitaConfig
from vllm_patches.image_preprocess import TILE_SIZE, TOKENS_PER_TILE, image_to_pixel_values


class VitaProcessingInfo(BaseProcessingInfo):
    """Limits and token counts of VITA-1.5's image and audio inputs."""

    def get_hf_config(self) -> VitaConfig:
        return self.ctx.get_hf_config(VitaConfig)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None, "audio": None}

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {}  # no transformers ProcessorMixin behind this model

    def max_image_tiles(self) -> int:
        """Tiles of the largest image: the grid maximum plus the thumbnail."""
        cfg = self.get_hf_config()
        return cfg.max_dynamic_patch + int(cfg.use_thumbnail and cfg.max_dynamic_patch > 1)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": TOKENS_PER_TILE * self.max_image_tiles(), "audio": num_audio_tokens(max_audio_samples())}

    def cmvn(self) -> Cmvn:
        """The checkpoint's CMVN statistics, carried by the config."""
        cfg = self.get_hf_config()
        return Cmvn.from_lists(cfg.cmvn_means, cfg.cmvn_istds)


class VitaDummyInputsBuilder(BaseDummyInputsBuilder[VitaProcessingInfo]):
    """Largest inputs for memory profiling: square images of the widest grid, the longest audio."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return ""  # unused: get_dummy_inputs builds token ids directly

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int],
                          mm_options: MultiModalDummyOptions) -> MultiModalDataDict:
        side = TILE_SIZE * self.info.get_hf_config().max_dynamic_patch
        audio = np.sin(np.arange(max_audio_samples(), dtype=np.float32) * 0.05) * 0.1  # not silent
        return {
            "image": self._get_dummy_images(width=side, height=TILE_SIZE, num_images=mm_counts.get("image", 0)),
            "audio": [audio] * mm_counts.get("audio", 0),
        }


class VitaMultiModalProcessor(BaseMultiModalProcessor[VitaProcessingInfo]):
    """Images → tiles → pixel values; audio → fbank → CMVN; then placeholder expansion."""

    requires_tokenizer = False  # placeholders are matched by id and dummy prompts are built as ids

    def get_dummy_inputs(self, seq_len: int, mm_counts: Mapping[str, int],
                         mm_options: MultiModalDummyOptions) -> ProcessorInputs:
        cfg = self.info.get_hf_config()
        prompt = [cfg.image_token_index] * mm_counts.get("image", 0) + [cfg.audio_token_index] * mm_counts.get(
            "audio", 0)
        data = self.dummy_inputs.get_dummy_mm_data(seq_len, mm_counts, mm_options)
        return ProcessorInputs(prompt=prompt, mm_data_items=self.info.parse_mm_data(data, validate=False))

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        cfg = self.info.get_hf_config()
        out: dict[str, torch.Tensor] = {}
        images: list[Any] = hf_data.get("images") or []  # type: ignore[assignment]
        if images:
            tiles = [image_to_pixel_values(_as_pil(img), max_num=cfg.max_dynamic_patch,
                                           min_num=cfg.min_dynamic_patch, use_thumbnail=cfg.use_thumbnail)
                     for img in images]
            out["pixel_values"] = torch.from_numpy(np.concatenate(tiles))
            out["image_num_tiles"] = torch.tensor([t.shape[0] for t in tiles])
        clips: list[Any] = hf_data.get("audio") or []  # type: ignore[assignment]
        if clips:
            cmvn = self.info.cmvn()
            feats = [waveform_to_features(np.asarray(c, dtype=np.float32).reshape(-1), cmvn) for c in clips]
            out["audio_features"] = torch.from_numpy(np.concatenate(feats))
            out["audio_num_frames"] = torch.tensor([f.shape[0] for f in feats])
        return BatchFeature(out)

    def _get_mm_fields_config(self, hf_inputs: BatchFeature,
                              hf_processor_mm_kwargs: Mapping[str, object]) -> Mapping[str, MultiModalFieldConfig]:
        tiles = hf_inputs.get("image_num_tiles", torch.empty(0, dtype=torch.long))
        frames = hf_inputs.get("audio_num_frames", torch.empty(0, dtype=torch.long))
        return {
            "pixel_values": MultiModalFieldConfig.flat_from_sizes("image", tiles),
            "image_num_tiles": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            "audio_features": MultiModalFieldConfig.flat_from_sizes("audio", frames),
            "audio_num_frames": MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
        }

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        cfg = self.info.get_hf_config()
        data = out_mm_kwargs.get_data()
        tiles: Any = data.get("image_num_tiles")
        frames: Any = data.get("audio_num_frames")

        def image_tokens(i: int) -> list[int]:
            return [cfg.image_token_index] * (TOKENS_PER_TILE * int(tiles[i]))

        def audio_tokens(i: int) -> list[int]:
            return [cfg.audio_token_index] * num_audio_tokens_from_frames(int(frames[i]))

        return [
            PromptReplacement(modality="image", target=[cfg.image_token_index], replacement=image_tokens),
            PromptReplacement(modality="audio", target=[cfg.audio_token_index], replacement=audio_tokens),
        ]


def _as_pil(image: object) -> Image.Image:
    """vLLM hands images as PIL, HWC arrays or tensors; the tiler takes PIL."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, torch.Tensor):
        image = image.numpy()
    if isinstance(image, np.ndarray):
        return Image.fromarray(image.astype(np.uint8))
    raise TypeError(f"unsupported image type {type(image).__name__}")

