"""vLLM general plugin for VITA-1.5 (entry point ``vllm.general_plugins: vita``)."""


def register() -> None:
    """Register VITA-1.5 with vLLM's registries; safe to call many times, in every process."""
    from vllm_patches.registration import register_all

    register_all()
