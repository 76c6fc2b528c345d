"""Typed errors of the VITA-1.5 LLM layer: every bad input maps to one of these, never to a crash."""

from __future__ import annotations


class LlmError(Exception):
    """Base class of every error raised by ``engine.llm``."""


class InputError(LlmError, ValueError):
    """A request carried input the model cannot take (the caller's fault; the engine is fine)."""


class AudioInputError(InputError):
    """Audio is empty, silent, too short, too long or not finite."""


class ImageInputError(InputError):
    """An image is corrupt, degenerate, or there are more images than allowed."""


class PromptTooLongError(InputError):
    """The prompt (after placeholder expansion) does not fit the context budget."""


class CheckpointError(LlmError, FileNotFoundError):
    """The checkpoint folder is not a VITA-1.5 layout we know, or misses a file or key (named)."""


class EngineDeadError(LlmError, RuntimeError):
    """The vLLM engine process died; requests fail with this until the engine is restarted."""
