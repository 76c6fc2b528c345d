"""Every option of the VITA-1.5 LLM layer, typed and documented in one place, with its default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class LlmOptions:
    """How the VITA-1.5 LLM is served. Defaults suit one GPU; tests pass CPU-sized values."""

    model_path: Path
    """The checkpoint folder: the VITA-1.5 release as downloaded, or the demo's prepared folder."""
    num_engines: int = 2
    """vLLM engine instances (1 or 2). Two let a new turn start while an old one is still aborting."""
    devices: tuple[str, ...] = ()
    """One device per engine, e.g. ``("cuda:0", "cuda:1")``; empty = all on the default device (one GPU,
    or the CPU where vLLM's CPU build runs both engines in this process)."""
    gpu_memory_share: float = 0.42
    """Fraction of the GPU's memory each engine may take (vLLM ``gpu_memory_utilization``); the two
    engines on one GPU together stay under 0.9."""
    kv_cache_memory_bytes: int | None = None
    """Explicit KV-cache size per engine; overrides ``gpu_memory_share`` for the cache (needed on CPU)."""
    max_model_len: int = 8192
    """Context length: prompt (history + media tokens) plus the reply."""
    dtype: str = "auto"
    """Weights/activations dtype (``auto`` = the checkpoint's, bf16 for the release)."""
    enforce_eager: bool = False
    """Skip graph capture / torch.compile (faster start; tests use it)."""
    max_dynamic_patch: int = 1
    """Maximum 448² tiles per image (1 = one stretched tile, 256 tokens: the real-time setting)."""
    max_images: int = 4
    """Camera frames accepted per turn; more is a typed error (the controller picks the frames)."""
    max_new_tokens: int = 512
    """Reply length limit (the reference's)."""
    temperature: float = 0.0
    """Sampling temperature; 0 = greedy (the reference uses 0.001, which is greedy in effect)."""
    history_turns: int = 4
    """Previous exchanges kept in the prompt (oldest dropped first; the token budget may drop more)."""

    def __post_init__(self) -> None:
        if self.num_engines not in (1, 2):
            raise ValueError(f"num_engines must be 1 or 2, got {self.num_engines}")
        if self.devices and len(self.devices) != self.num_engines:
            raise ValueError(f"give one device per engine: {self.num_engines} engines, devices {self.devices}")
        if not 0.0 < self.gpu_memory_share < 1.0:
            raise ValueError(f"gpu_memory_share must be in (0, 1), got {self.gpu_memory_share}")
        if self.max_new_tokens >= self.max_model_len:
            raise ValueError("max_new_tokens must be smaller than max_model_len")
        if not 1 <= self.max_dynamic_patch <= 12:
            raise ValueError(f"max_dynamic_patch must be in 1..12, got {self.max_dynamic_patch}")

    @property
    def prompt_budget(self) -> int:
        """Tokens a prompt may use: the context minus room for the whole reply."""
        return self.max_model_len - self.max_new_tokens
