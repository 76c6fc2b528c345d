"""InternViT-300M vision tower, VITA's ×0.5 pixel shuffle and the MLP projector, in plain torch.

Parameter names are the released ones under ``model.vision_tower.vision_tower.`` so the checkpoint loads
unchanged (docs/model.md, "Vision tower", "Pixel shuffle and projector"). Used inside the vLLM model
and on its own (parity tests, bench).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vllm_patches.geometry import VisionGeometry


class InternVisionEmbeddings(nn.Module):
    """Patch convolution + CLS + learned positions (native 448² grid only)."""

    def __init__(self, geo: VisionGeometry) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, geo.hidden_size))
        self.patch_embedding = nn.Conv2d(3, geo.hidden_size, geo.patch_size, geo.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, geo.grid**2 + 1, geo.hidden_size))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # token = y·grid + x
        cls = self.class_embedding.expand(patches.shape[0], -1, -1).to(patches.dtype)
        # At the native grid the reference's bicubic resize of the table is an identity, so it is skipped.
        return torch.cat([cls, patches], dim=1) + self.position_embedding.to(patches.dtype)


class InternAttention(nn.Module):
    """Bidirectional multi-head attention with a fused, biased qkv projection."""

    def __init__(self, geo: VisionGeometry) -> None:
        super().__init__()
        self.num_heads = geo.num_heads
        self.qkv = nn.Linear(geo.hidden_size, 3 * geo.hidden_size)
        self.proj = nn.Linear(geo.hidden_size, geo.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class InternMLP(nn.Module):
    """fc1 → exact GELU → fc2."""

    def __init__(self, geo: VisionGeometry) -> None:
        super().__init__()
        self.fc1 = nn.Linear(geo.hidden_size, geo.intermediate_size)
        self.fc2 = nn.Linear(geo.intermediate_size, geo.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class InternVisionLayer(nn.Module):
    """Pre-norm block with layer-scale vectors ``ls1``/``ls2``."""

    def __init__(self, geo: VisionGeometry) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(geo.hidden_size, eps=geo.layer_norm_eps)
        self.attn = InternAttention(geo)
        self.ls1 = nn.Parameter(torch.ones(geo.hidden_size))
        self.norm2 = nn.LayerNorm(geo.hidden_size, eps=geo.layer_norm_eps)
        self.mlp = InternMLP(geo)
        self.ls2 = nn.Parameter(torch.ones(geo.hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x)) * self.ls1
        return x + self.mlp(self.norm2(x)) * self.ls2


class InternVisionEncoder(nn.Module):
    """The stack of layers (names ``encoder.layers.N``)."""

    def __init__(self, geo: VisionGeometry) -> None:
        super().__init__()
        self.layers = nn.ModuleList(InternVisionLayer(geo) for _ in range(geo.num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class InternVisionModel(nn.Module):
    """Tiles ``[n, 3, 448, 448]`` → last hidden state ``[n, 1 + grid², hidden]`` (CLS included, no norm)."""

    def __init__(self, geo: VisionGeometry) -> None:
        super().__init__()
        self.embeddings = InternVisionEmbeddings(geo)
        self.encoder = InternVisionEncoder(geo)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embeddings(pixels))


def pixel_shuffle(features: torch.Tensor, geo: VisionGeometry) -> torch.Tensor:
    """ViT tokens without CLS ``[n, grid², C]`` → ×0.5 → ``[n, tokens_per_tile, 4C]`` (reference order)."""
    n, _, c = features.shape
    s, g = geo.shuffle_factor, geo.grid
    x = (features * 0.5).reshape(n, g, g, c)  # VITA scales the features by 0.5 (a quirk of its training)
    x = x.reshape(n, g, g // s, c * s).permute(0, 2, 1, 3)
    x = x.reshape(n, g // s, g // s, c * s * s).permute(0, 2, 1, 3)
    return x.reshape(n, -1, c * s * s)


class VisionProjector(nn.Module):
    """``mlp2x_gelu``: Linear → exact GELU → Linear (checkpoint ``model.mm_projector.0`` / ``.2``)."""

    def __init__(self, in_features: int, llm_hidden: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, llm_hidden)
        self.linear_2 = nn.Linear(llm_hidden, llm_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(x)))


class VisionPath(nn.Module):
    """ViT → drop CLS → ×0.5 pixel shuffle → projector: tiles → ``[n, 256, llm_hidden]``."""

    def __init__(self, geo: VisionGeometry, llm_hidden: int, tower: nn.Module | None = None) -> None:
        super().__init__()
        self.geo = geo
        # ``tower``: any module with the same parameter names mapping tiles to [n, 1 + grid², hidden]
        # (the served model passes vLLM's own InternVisionModel); default: the plain-torch one above.
        self.vision_tower = tower if tower is not None else InternVisionModel(geo)
        self.vision_projector = VisionProjector(geo.projector_in, llm_hidden)

    def vit_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Last ViT layer without CLS ``[n, grid², hidden]``."""
        return self.vision_tower(pixels)[:, 1:]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision_projector(pixel_shuffle(self.vit_features(pixels), self.geo))
