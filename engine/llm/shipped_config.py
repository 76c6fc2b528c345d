"""The vLLM-side VITA-1.5 configuration values that the HF release lacks (docs/model.md, "Config values").

The public demo copies these from its GitHub folder over the checkpoint; we ship them instead. Text
geometry comes from the release's own ``config.json``; tower geometry defaults to these values and is
checked against the tensor shapes of the safetensors.
"""

from __future__ import annotations

from typing import Any

IMAGE_TOKEN_INDEX = 51000
AUDIO_TOKEN_INDEX = 51001
"""Placeholder ids of the demo: ordinary Qwen BPE ids whose embedding rows are overwritten."""

VISION_CONFIG: dict[str, Any] = {
    "hidden_act": "gelu", "hidden_size": 1024, "image_size": 448, "intermediate_size": 4096,
    "layer_norm_eps": 1e-6, "norm_type": "layer_norm", "num_attention_heads": 16, "num_channels": 3,
    "num_hidden_layers": 24, "patch_size": 14, "qk_normalization": False, "qkv_bias": True,
}
VISION_HEAD_DIM = 64
"""InternViT-300M's head size: the head count is ``hidden_size / 64`` when the width differs."""

AUDIO_CONFIG: dict[str, Any] = {
    "hidden_act": "relu", "hidden_size": 1024, "input_dim": 80, "intermediate_size": 4096,
    "layer_norm_eps": 1e-5, "max_position_embeddings": 5000, "normalize_before": True,
    "num_attention_heads": 16, "num_hidden_layers": 24, "use_relative_pe": True,
}

TOP_LEVEL: dict[str, Any] = {
    "downsample_ratio": 0.5, "min_dynamic_patch": 1, "use_thumbnail": True,
    "image_token_index": IMAGE_TOKEN_INDEX, "audio_token_index": AUDIO_TOKEN_INDEX,
}

TEXT_KEYS_REQUIRED = (
    "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads",
    "vocab_size",
)
TEXT_KEYS_OPTIONAL: dict[str, Any] = {
    "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
    "bos_token_id": 151643, "eos_token_id": 151645, "tie_word_embeddings": False, "attention_dropout": 0.0,
    "use_sliding_window": False, "sliding_window": 131072, "max_window_layers": 28,
}
