"""Every option of the VITA-1.5 LLM layer and its supervision, typed and documented in one place.

The attribute docstrings below are the help text of ``launch.py --help`` (``server.config`` reads them), so
each one says what the option does in a sentence an operator can act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CPU_KV_CACHE_MB = 512
"""KV cache per engine on CPU when none is given (vLLM's CPU build cannot size it from a memory share)."""


@dataclass(frozen=True, slots=True)
class LlmOptions:
    """How the VITA-1.5 LLM is served. Defaults suit one GPU; tests pass CPU-sized values."""

    # Set by the launcher from --model_path (or the tiny demo checkpoint): not an option of its own.
    model_path: Path | None = field(default=None, metadata={"config": False})
    """The checkpoint folder: the VITA-1.5 release as downloaded, or the demo's prepared folder."""
    num_engines: int = 2
    """vLLM engine instances: 2 = generator + monitor (full duplex: a new turn starts while the old one is
    still aborting), 1 = one shared engine."""
    devices: tuple[str, ...] = ()
    """Comma-separated device per engine, e.g. cuda:0,cuda:1; with --tensor_parallel_size N each entry is a
    group of N joined by '+', e.g. cuda:0+cuda:1,cuda:2+cuda:3. Empty = every engine on the first visible
    GPU(s), or on the CPU."""
    tensor_parallel_size: int = 1
    """GPUs each vLLM engine is split over (vLLM tensor parallelism). 1 is the recommended layout: the 7B
    model fits one GPU; scale with replicas (docs/deploy.md)."""
    gpu_memory_share: float = 0.42
    """GPU memory fraction per engine (vLLM gpu_memory_utilization); two engines on one GPU stay under 0.9."""
    kv_cache_mb: int = 0
    """KV cache per engine in MiB (0: from --gpu_memory_share on a GPU; 512 on CPU)."""
    max_model_len: int = 8192
    """Context length: history + media tokens + reply."""
    dtype: str = "auto"
    """LLM dtype (auto = the checkpoint's, bf16 for the release)."""
    enforce_eager: bool = False
    """Skip graph capture / torch.compile (faster start, slower decode)."""
    max_dynamic_patch: int = 1
    """Maximum 448x448 tiles per image (1 = one stretched tile, 256 tokens: the real-time setting)."""
    max_images: int = 4
    """Camera frames accepted per prompt; more is a typed error (the duplex controller picks the frames)."""
    max_new_tokens: int = 512
    """Longest reply in tokens (the reference's limit)."""
    temperature: float = 0.0
    """Sampling temperature; 0 = greedy (the reference uses 0.001, which is greedy in effect)."""
    history_turns: int = 4
    """Previous exchanges kept per conversation and in the prompt (oldest dropped first; the token budget
    may drop more)."""

    def __post_init__(self) -> None:
        if self.num_engines not in (1, 2):
            raise ValueError(f"num_engines must be 1 or 2, got {self.num_engines}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.devices and len(self.devices) != self.num_engines:
            raise ValueError(f"give one device per engine: {self.num_engines} engines, devices {self.devices}")
        for group in self.devices:
            if len(group.split("+")) != self.tensor_parallel_size:
                raise ValueError(f"device {group!r}: each engine needs tensor_parallel_size="
                                 f"{self.tensor_parallel_size} devices, joined by '+'")
        if not 0.0 < self.gpu_memory_share < 1.0:
            raise ValueError(f"gpu_memory_share must be in (0, 1), got {self.gpu_memory_share}")
        if self.kv_cache_mb < 0:
            raise ValueError(f"kv_cache_mb must be >= 0, got {self.kv_cache_mb}")
        if self.max_new_tokens >= self.max_model_len:
            raise ValueError("max_new_tokens must be smaller than max_model_len")
        if not 1 <= self.max_dynamic_patch <= 12:
            raise ValueError(f"max_dynamic_patch must be in 1..12, got {self.max_dynamic_patch}")
        if self.history_turns < 0:
            raise ValueError(f"history_turns must be >= 0, got {self.history_turns}")

    @property
    def prompt_budget(self) -> int:
        """Tokens a prompt may use: the context minus room for the whole reply."""
        return self.max_model_len - self.max_new_tokens

    def kv_cache_bytes(self, on_cpu: bool) -> int | None:
        """The KV-cache size handed to vLLM; ``None`` lets vLLM size it from ``gpu_memory_share``."""
        mb = self.kv_cache_mb or (CPU_KV_CACHE_MB if on_cpu else 0)
        return mb << 20 if mb else None


@dataclass(frozen=True, slots=True)
class SupervisionOptions:
    """How dead vLLM engines are restarted (``engine.llm.supervisor``)."""

    # Named "restart" on the command line: --restart / --no-restart.
    enabled: bool = field(default=True, metadata={"name": "restart"})
    """Restart a dead vLLM engine (the other keeps serving); off: it stays dead until the server restarts."""
    backoff_s: float = 1.0
    """Seconds before a dead vLLM engine is restarted; doubled after each failed attempt."""
    backoff_max_s: float = 30.0
    """Longest wait between restart attempts of a dead vLLM engine."""
    max_attempts: int = 10
    """Consecutive failed restarts after which an engine is given up (/healthz then fails); 0 = never."""
    stable_s: float = 60.0
    """A restarted engine that serves this long starts its next crash with a fresh backoff."""
    watch_s: float = 0.5
    """How often the supervisor looks at the engines (a death is noticed within this)."""

    def __post_init__(self) -> None:
        if self.backoff_s <= 0 or self.backoff_max_s < self.backoff_s:
            raise ValueError("restart backoff must be positive, and its cap at least the first wait")
        if self.max_attempts < 0 or self.stable_s < 0 or self.watch_s <= 0:
            raise ValueError("max_attempts and stable_s must be >= 0, watch_s > 0")
