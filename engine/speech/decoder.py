"""The NAR + AR Llama speech decoder (``LLM2TTSCodecAR``) in plain torch, with a KV cache.

Maths follow docs/model.md, "Speech decoder": RMSNorm with fp32 statistics, rotate-half RoPE (θ 10⁴)
computed in fp32, eager attention with an fp32 softmax, SiLU-gated MLP. The NAR ``pre_nn`` stack and the
prefix pass are bidirectional (no mask); each generated code attends to the whole cache and itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.speech.checkpoint import (
    LoadReport,
    as_state_dict,
    freeze_for_inference,
    load_strict,
    read_torch_file,
)
from engine.speech.config import DecoderConfig
from engine.speech.errors import SpeechInputError

Rope = tuple[torch.Tensor, torch.Tensor]
"""cos/sin tables of the positions being processed."""
LayerCache = tuple[torch.Tensor, torch.Tensor, int]
"""One sequence's preallocated keys and values in one layer, and the position where new tokens go."""


class RMSNorm(nn.Module):
    """Llama RMSNorm: statistics in fp32, weight applied after casting back."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> Rope:
    """cos/sin tables [..., head_dim] for integer ``positions`` of any shape, in fp32 (rotate-half)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    freqs = positions.float()[:, None] * inv_freq.to(positions.device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _softmax_fp32(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim in fp32, spelt out: ``F.softmax`` opens a thread-parallel region per
    call, which stalls for milliseconds on a busy CPU; these elementwise ops stay single-threaded."""
    x = scores.float()
    exp = (x - x.amax(-1, keepdim=True)).exp()
    return exp / exp.sum(-1, keepdim=True)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    if cos.dim() == 3:  # per-row positions [B, T, d] → broadcast over heads
        cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


@dataclass(slots=True, eq=False)  # identity semantics: holds tensors
class KVCache:
    """Preallocated keys/values of one sequence for every AR layer; ``length`` positions are filled."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def allocate(cls, cfg: DecoderConfig, capacity: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """Room for ``capacity`` positions in each of the ``cfg.num_blocks`` AR layers."""
        shape = (1, cfg.num_heads, capacity, cfg.head_dim)
        return cls(
            keys=[torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.num_blocks)],
            values=[torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.num_blocks)],
        )

    @property
    def capacity(self) -> int:
        """Positions the cache can hold."""
        return self.keys[0].shape[2]


class Attention(nn.Module):
    """Multi-head self-attention without biases; optionally appends to and reads from a KV cache."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.k_proj = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.v_proj = nn.Linear(cfg.hidden, cfg.hidden, bias=False)
        self.o_proj = nn.Linear(cfg.hidden, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor, rope: Rope, caches: Sequence[LayerCache] | None = None) -> torch.Tensor:
        """``x`` [B, T, hidden]; with ``caches`` (one per row) the new keys/values are appended first."""
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.heads, self.head_dim).transpose(1, 2) for p in self._qkv())
        q, k = _rotate(q, *rope), _rotate(k, *rope)
        if caches is None:
            out = self._attend(q, k, v)
        else:
            # Rows share the projections (one matmul for the batch) but attend to their own caches.
            rows = []
            for i, (cache_k, cache_v, start) in enumerate(caches):
                cache_k[:, :, start : start + t] = k[i : i + 1]
                cache_v[:, :, start : start + t] = v[i : i + 1]
                rows.append(self._attend(q[i : i + 1], cache_k[:, :, : start + t], cache_v[:, :, : start + t]))
            out = rows[0] if b == 1 else torch.cat(rows)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.shape[2] == 1:
            # One new token: broadcast products instead of matmul, whose CPU kernels pay a set-up cost
            # per new shape (the cache grows every step). Same maths.
            scores = (q * k).sum(-1) / math.sqrt(self.head_dim)  # [b, heads, cache]
            out = (_softmax_fp32(scores).to(q.dtype)[..., None] * v).sum(2, keepdim=True)
        else:
            scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
            out = torch.matmul(_softmax_fp32(scores).to(q.dtype), v)
        return out

    def _qkv(self) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
        return self.q_proj, self.k_proj, self.v_proj


class MLP(nn.Module):
    """SiLU-gated feed-forward block."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.up_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """One pre-norm Llama layer, with the checkpoint's parameter names."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.rms_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.rms_eps)

    def forward(self, x: torch.Tensor, rope: Rope, caches: Sequence[LayerCache] | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, caches)
        return x + self.mlp(self.post_attention_layernorm(x))


@dataclass(slots=True, eq=False)  # identity semantics: holds tensors
class DecodeState:
    """Everything one utterance's AR decoding carries between steps."""

    cache: KVCache
    prefix_length: int
    steps: int = 0
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """Debug outputs (``pre_nn``, ``prefix``) when requested."""


class SpeechDecoder(nn.Module):
    """NAR ``pre_nn`` + AR Llama stack emitting codec codes from conditioning slices."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab, cfg.idim, padding_idx=cfg.pad)
        self.layers_pre_nn = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_blocks // 2))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_blocks))
        self.norm = RMSNorm(cfg.hidden, cfg.rms_eps)
        self.out_fnn = nn.Linear(cfg.output_dim, cfg.vocab, bias=True)
        freeze_for_inference(self)

    @classmethod
    def from_files(cls, folder: Path, trust_pickles: bool = False) -> tuple[SpeechDecoder, LoadReport]:
        """Load ``folder/model.json`` + ``folder/final.pt``; ``layers_prefix.*`` is knowingly unused."""
        cfg = DecoderConfig.from_json(folder / "model.json")
        model = cls(cfg)
        path = folder / "final.pt"
        state = as_state_dict(read_torch_file(path, trust_pickles), path)
        report = load_strict(model, {k: v.float() for k, v in state.items()}, path, skip_prefixes=("layers_prefix.",))
        return model, report

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights (fp32 on CPU, bf16 on GPU by default)."""
        return self.embedding.weight.dtype

    def _rope(self, start: int, length: int) -> Rope:
        positions = torch.arange(start, start + length, device=self.device)
        return rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)

    @torch.inference_mode()
    def start(self, conditioning: torch.Tensor, max_codes: int, keep_debug: bool = False) -> DecodeState:
        """Run ``pre_nn`` on [4N, idim] conditioning, then the prefix [BOS, pre_nn(x)] into a fresh cache."""
        if conditioning.dim() != 2 or conditioning.shape[1] != self.cfg.idim or conditioning.shape[0] == 0:
            raise SpeechInputError(
                f"conditioning must be [4N>0, {self.cfg.idim}], got {tuple(conditioning.shape)}"
            )
        prefix_length = conditioning.shape[0] + 1
        if prefix_length + max_codes + 1 > self.cfg.max_positions:
            raise SpeechInputError(
                f"text too long for one utterance: prefix {prefix_length} + {max_codes} codes exceeds "
                f"{self.cfg.max_positions} positions; split it into shorter clauses"
            )
        h = conditioning.to(self.device, self.dtype)[None]
        rope = self._rope(0, h.shape[1])
        for layer in self.layers_pre_nn:
            h = layer(h, rope)
        bos = self.embedding.weight[self.cfg.bos][None, None]
        x = torch.cat((bos, h), dim=1)
        cache = KVCache.allocate(self.cfg, prefix_length + max_codes + 1, self.device, self.dtype)
        x = self._run_ar(x, [cache])
        state = DecodeState(cache=cache, prefix_length=prefix_length)
        if keep_debug:
            state.extra = {"pre_nn": h[0].float().cpu(), "prefix": x[0].float().cpu()}
        return state

    def _run_ar(self, x: torch.Tensor, caches: Sequence[KVCache]) -> torch.Tensor:
        """Run [B, T, hidden] through the AR layers, row b appending to ``caches[b]``."""
        t = x.shape[1]
        if any(c.length + t > c.capacity for c in caches):
            raise SpeechInputError("KV cache full: the utterance exceeded its code budget")
        if len(caches) == 1:
            rope = self._rope(caches[0].length, t)
        else:
            offsets = torch.arange(t, device=self.device)
            starts = torch.tensor([c.length for c in caches], device=self.device)
            rope = rope_tables(starts[:, None] + offsets[None], self.cfg.head_dim, self.cfg.rope_theta)
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, [(c.keys[i], c.values[i], c.length) for c in caches])
        for c in caches:
            c.length += t
        return x

    @torch.inference_mode()
    def step(self, state: DecodeState, token: int) -> torch.Tensor:
        """Feed one token (SOS or the last code) and return fp32 logits over all ``vocab`` ids."""
        return self.step_batch([state], [token])[0]

    @torch.inference_mode()
    def step_batch(self, states: Sequence[DecodeState], tokens: Sequence[int]) -> torch.Tensor:
        """One AR step for several independent utterances at once → fp32 logits [B, vocab].

        The projections and MLPs run once for the whole batch (the weights are read once); attention
        stays per utterance, over its own cache.
        """
        ids = torch.tensor(list(tokens), device=self.device)
        x = self._run_ar(self.embedding.weight[ids][:, None], [s.cache for s in states])
        for s in states:
            s.steps += 1
        return self.out_fnn(self.norm(x))[:, 0].float()
