"""Registration of the VITA-1.5 config and model class with transformers and vLLM (every process)."""

from __future__ import annotations

# The VITA-1.5 release's own ``config.json`` declares ``model_type "vita-Qwen2"`` (reference class
# ``VITAQwen2Config``). We never serve from it (``engine.llm.checkpoint`` writes our own config), but vLLM
# loads the *tokenizer* from the checkpoint folder, and ``vllm.tokenizers.registry.get_tokenizer`` first
# calls ``get_config(folder)`` on it. Unknown to transformers, that raised inside vLLM's ``with_retry``,
# which logged two ERROR lines per attempt (and slept 2 s) in the API process, the engine core and the
# worker of every engine (18 lines per engine, ~36 per two-engine start). Teaching transformers the type removes them at the
# source; the tokenizer itself is named by ``tokenizer_config.json`` (``Qwen2Tokenizer``), so it is unchanged.
RELEASE_MODEL_TYPE = "vita-Qwen2"


def _release_config_class() -> type:
    """``VITAQwen2Config`` as the reference defines it: a ``Qwen2Config`` with its own ``model_type``.

    The extra keys of the release file (``mm_vision_tower``, ``mm_audio_encoder``, …) become plain attributes.
    """
    from transformers import Qwen2Config

    class VitaQwen2ReleaseConfig(Qwen2Config):
        model_type = RELEASE_MODEL_TYPE

    return VitaQwen2ReleaseConfig


def register_all() -> None:
    """Register the VITA-1.5 config and model class; idempotent, never touches CUDA."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from vllm import ModelRegistry

    from vllm_patches.config import ARCHITECTURE, MODEL_TYPE, VitaConfig

    try:
        AutoConfig.register(MODEL_TYPE, VitaConfig)
    except ValueError:
        pass  # already registered in this process
    if RELEASE_MODEL_TYPE not in CONFIG_MAPPING:
        AutoConfig.register(RELEASE_MODEL_TYPE, _release_config_class())
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        # Lazy "module:Class" form: the model module (and torch kernels) load only where vLLM builds it.
        ModelRegistry.register_model(ARCHITECTURE, f"vllm_patches.model:{ARCHITECTURE}")
