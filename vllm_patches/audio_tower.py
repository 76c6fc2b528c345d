"""The "whale" audio encoder and its adapter in plain torch (docs/model.md, "Audio encoder", "Audio adapter").

Conv ×4 subsampling → Linear/LayerNorm/ReLU embedding → ×√D → 24 pre-norm Transformer-XL layers with
relative-position attention (WeNet legacy, no rel-shift) → final LayerNorm; then the adapter:
right-pad 4 → Conv1d(k 5, stride 2) → LayerNorm(eps 1e-3) → GELU → Linear to the LLM width.
Inner layer names match the checkpoint (``self_attn.linear_q`` …) so the rename is by prefix only.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from vllm_patches.geometry import AudioGeometry


def sinusoid_positions(length: int, dim: int) -> torch.Tensor:
    """``PE[p, 2i] = sin(p·exp(−2i·ln(1e4)/dim))``, ``PE[p, 2i+1] = cos(…)``, float32 ``[1, length, dim]``."""
    position = torch.arange(0, length, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe.unsqueeze(0)


class ConvSubsampling(nn.Module):
    """Two 3×3 stride-2 Conv2d + ReLU, channel-major flatten, Linear: ``[B, T, 80]`` → ``[B, T', D]``."""

    def __init__(self, geo: AudioGeometry) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, geo.hidden_size, 3, 2)
        self.conv2 = nn.Conv2d(geo.hidden_size, geo.hidden_size, 3, 2)
        self.out = nn.Linear(geo.hidden_size * geo.subsampled_dim, geo.hidden_size)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(feats.unsqueeze(1)))))
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))


class RelPositionAttention(nn.Module):
    """Multi-head attention with Transformer-XL biases u, v and absolute-indexed position keys."""

    def __init__(self, geo: AudioGeometry) -> None:
        super().__init__()
        d, h = geo.hidden_size, geo.num_heads
        self.num_heads, self.head_dim = h, d // h
        self.linear_q = nn.Linear(d, d)
        self.linear_k = nn.Linear(d, d)
        self.linear_v = nn.Linear(d, d)
        self.linear_out = nn.Linear(d, d)
        self.linear_pos = nn.Linear(d, d, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(h, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(h, self.head_dim))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.linear_q(x).view(b, t, self.num_heads, self.head_dim)
        k = self.linear_k(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        p = self.linear_pos(pos).view(1, t, self.num_heads, self.head_dim).transpose(1, 2)
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        position = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))
        scores = (content + position) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.linear_out(out.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    """w_1 → ReLU → w_2."""

    def __init__(self, geo: AudioGeometry) -> None:
        super().__init__()
        self.w_1 = nn.Linear(geo.hidden_size, geo.intermediate_size)
        self.w_2 = nn.Linear(geo.intermediate_size, geo.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.relu(self.w_1(x)))


class WhaleLayer(nn.Module):
    """Pre-norm residual block: rel-pos attention, then the ReLU feed-forward."""

    def __init__(self, geo: AudioGeometry) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(geo.hidden_size, eps=geo.layer_norm_eps)
        self.self_attn = RelPositionAttention(geo)
        self.norm2 = nn.LayerNorm(geo.hidden_size, eps=geo.layer_norm_eps)
        self.feed_forward = FeedForward(geo)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), pos, key_mask)
        return x + self.feed_forward(self.norm2(x))


class WhaleEncoder(nn.Module):
    """CMVN-normalised fbank ``[B, T, 80]`` + frame mask ``[B, T]`` → ``([B, T', D], mask [B, T'])``."""

    def __init__(self, geo: AudioGeometry) -> None:
        super().__init__()
        self.geo = geo
        self.subsampling = ConvSubsampling(geo)
        self.embed_linear = nn.Linear(geo.hidden_size, geo.hidden_size)
        self.embed_norm = nn.LayerNorm(geo.hidden_size, eps=geo.layer_norm_eps)
        self.layers = nn.ModuleList(WhaleLayer(geo) for _ in range(geo.num_layers))
        self.final_norm = nn.LayerNorm(geo.hidden_size, eps=geo.layer_norm_eps)
        self.register_buffer("positions", sinusoid_positions(geo.max_positions, geo.hidden_size),
                             persistent=False)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.subsampling(feats)
        mask = mask.bool()[:, 2::2][:, 2::2]
        t = x.shape[1]
        if t > self.geo.max_positions:
            raise ValueError(f"audio too long for the encoder: {t} frames > {self.geo.max_positions}")
        x = F.relu(self.embed_norm(self.embed_linear(x))) * math.sqrt(self.geo.hidden_size)
        pos = cast(torch.Tensor, self.positions)[:, :t].to(x.dtype)
        for layer in self.layers:
            x = layer(x, pos, mask)
        return self.final_norm(x), mask


class AudioAdapter(nn.Module):
    """Encoder output → LLM embeddings at half the frame rate (checkpoint ``adpter.*``)."""

    def __init__(self, geo: AudioGeometry, llm_hidden: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(geo.hidden_size, geo.adapter_channels, 5, 2)
        self.norm = nn.LayerNorm(geo.adapter_channels, eps=1e-3)
        self.linear = nn.Linear(geo.adapter_channels, llm_hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (x * mask.unsqueeze(-1).to(x.dtype)).transpose(1, 2)
        x = self.conv(F.pad(x, (0, 4))).transpose(1, 2)  # the reference's "left_padding" pads on the right
        return self.linear(F.gelu(self.norm(x))), mask[:, 0::2]


class AudioPath(nn.Module):
    """Whale encoder + adapter: padded fbank batch → ``(embeddings [B, T'', H], mask [B, T''])``."""

    def __init__(self, geo: AudioGeometry, llm_hidden: int) -> None:
        super().__init__()
        self.encoder = WhaleEncoder(geo)
        self.adapter = AudioAdapter(geo, llm_hidden)

    def forward(self, feats: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.adapter(*self.encoder(feats, mask))

    def embed_clips(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Encode variable-length clips ``[T_i, 80]`` as one padded batch; valid rows per clip."""
        lengths = [c.shape[0] for c in clips]
        batch = torch.zeros(len(clips), max(lengths), clips[0].shape[1], dtype=clips[0].dtype,
                            device=clips[0].device)
        mask = torch.zeros(len(clips), max(lengths), dtype=torch.bool, device=clips[0].device)
        for i, clip in enumerate(clips):
            batch[i, : lengths[i]] = clip
            mask[i, : lengths[i]] = True
        emb, out_mask = self(batch, mask)
        return [emb[i][out_mask[i]] for i in range(len(clips))]
