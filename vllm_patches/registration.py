"""Registration of the VITA-1.5 model with vLLM (filled in by the model work)."""


def register_all() -> None:
    """Register the VITA-1.5 config and model class; idempotent."""
