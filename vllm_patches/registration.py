"""Registration of the VITA-1.5 config and model class with transformers and vLLM (every process)."""

from __future__ import annotations


def register_all() -> None:
    """Register the VITA-1.5 config and model class; idempotent, never touches CUDA."""
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from vllm_patches.config import ARCHITECTURE, MODEL_TYPE, VitaConfig

    try:
        AutoConfig.register(MODEL_TYPE, VitaConfig)
    except ValueError:
        pass  # already registered in this process
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        # Lazy "module:Class" form: the model module (and torch kernels) load only where vLLM builds it.
        ModelRegistry.register_model(ARCHITECTURE, f"vllm_patches.model:{ARCHITECTURE}")
