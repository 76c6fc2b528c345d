"""Typed geometry of the VITA-1.5 towers, read from the ``vision_config`` / ``audio_config`` dicts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class VisionGeometry:
    """InternViT sizes (docs/model.md, "Vision tower"); real values are the defaults."""

    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    image_size: int = 448
    patch_size: int = 14
    layer_norm_eps: float = 1e-6
    downsample_ratio: float = 0.5

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], downsample_ratio: float = 0.5) -> VisionGeometry:
        """Take the keys of a ``vision_config`` dict (``vision_feature_layer`` −1 = all layers)."""
        return cls(
            hidden_size=int(cfg["hidden_size"]), num_layers=int(cfg["num_hidden_layers"]),
            num_heads=int(cfg["num_attention_heads"]), intermediate_size=int(cfg["intermediate_size"]),
            image_size=int(cfg["image_size"]), patch_size=int(cfg["patch_size"]),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-6)), downsample_ratio=float(downsample_ratio),
        )

    @property
    def grid(self) -> int:
        """Patches per side of a tile (32 at 448/14)."""
        return self.image_size // self.patch_size

    @property
    def shuffle_factor(self) -> int:
        """Side of the square of patches merged into one token (2 for ratio 0.5)."""
        return round(1 / self.downsample_ratio)

    @property
    def tokens_per_tile(self) -> int:
        """LLM tokens per tile after the pixel shuffle (256)."""
        return (self.grid // self.shuffle_factor) ** 2

    @property
    def projector_in(self) -> int:
        """Width of a shuffled token (4096)."""
        return self.hidden_size * self.shuffle_factor**2


@dataclass(frozen=True, slots=True)
class AudioGeometry:
    """Whale encoder sizes (docs/model.md, "Audio encoder"); real values are the defaults."""

    input_dim: int = 80
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    layer_norm_eps: float = 1e-5
    max_positions: int = 5000

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> AudioGeometry:
        """Take the keys of an ``audio_config`` dict."""
        return cls(
            input_dim=int(cfg.get("input_dim", 80)), hidden_size=int(cfg["hidden_size"]),
            num_layers=int(cfg["num_hidden_layers"]), num_heads=int(cfg["num_attention_heads"]),
            intermediate_size=int(cfg["intermediate_size"]), layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-5)),
            max_positions=int(cfg.get("max_position_embeddings", 5000)),
        )

    @property
    def subsampled_dim(self) -> int:
        """Mel bins left after the two stride-2 3×3 convolutions (19 of 80)."""
        return ((self.input_dim - 1) // 2 - 1) // 2

    @property
    def adapter_channels(self) -> int:
        """Adapter Conv1d width: twice the encoder width (2048)."""
        return 2 * self.hidden_size
