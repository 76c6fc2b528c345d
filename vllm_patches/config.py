"""The vLLM-side configuration class of VITA-1.5 (``model_type`` ``vita_duplex``).

It holds the Qwen2 ``text_config`` plus the tower dicts, placeholder ids, tiling defaults and the CMVN
statistics: every value of docs/model.md, "Config values" that the served model and its processor read. The engine
writes it (``engine.llm.checkpoint``) from whichever checkpoint layout the user has.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, Qwen2Config

MODEL_TYPE = "vita_duplex"
ARCHITECTURE = "VitaDuplexForConditionalGeneration"


class VitaConfig(PretrainedConfig):
    """Composite config: Qwen2 text model + InternViT + whale audio encoder."""

    model_type = MODEL_TYPE
    sub_configs = {"text_config": Qwen2Config}

    def __init__(
        self,
        text_config: dict[str, Any] | Qwen2Config | None = None,
        vision_config: dict[str, Any] | None = None,
        audio_config: dict[str, Any] | None = None,
        image_token_index: int = 51000,
        audio_token_index: int = 51001,
        downsample_ratio: float = 0.5,
        max_dynamic_patch: int = 1,
        min_dynamic_patch: int = 1,
        use_thumbnail: bool = True,
        cmvn_means: list[float] | None = None,
        cmvn_istds: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(text_config, dict):
            text_config = Qwen2Config(**{k: v for k, v in text_config.items() if k != "model_type"})
        self.text_config = text_config if text_config is not None else Qwen2Config()
        self.vision_config = dict(vision_config or {})
        self.audio_config = dict(audio_config or {})
        self.image_token_index = image_token_index
        self.audio_token_index = audio_token_index
        self.downsample_ratio = downsample_ratio
        self.max_dynamic_patch = max_dynamic_patch
        self.min_dynamic_patch = min_dynamic_patch
        self.use_thumbnail = use_thumbnail
        self.cmvn_means = list(cmvn_means or [])
        self.cmvn_istds = list(cmvn_istds or [])
        kwargs.setdefault("architectures", [ARCHITECTURE])
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
