"""Typed errors raised by the speech head."""

from __future__ import annotations


class SpeechError(Exception):
    """Base class of every error the speech head raises on purpose."""


class SpeechCheckpointError(SpeechError):
    """A ``vita_tts_ckpt`` file (or the LLM embedding table) is missing, malformed or inconsistent."""


class SpeechInputError(SpeechError):
    """The text or token ids handed to the speech head cannot be synthesised."""
