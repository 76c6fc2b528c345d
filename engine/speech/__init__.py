"""The VITA-1.5 streaming speech head: NAR/AR speech decoder + TiCodec vocoder at 24 kHz.

Entry points: :class:`SpeechHead` (``from_checkpoint``) and its per-reply :class:`ReplySynthesizer`;
:func:`write_tts_checkpoint` writes a tiny checkpoint in the released layout.
"""

from engine.speech.errors import SpeechCheckpointError, SpeechError, SpeechInputError
from engine.speech.head import ReplySynthesizer, SpeechHead, synthesize_text
from engine.speech.options import ReferenceStreamOptions, SpeechOptions
from engine.speech.streaming import StreamingOptions
from engine.speech.text_front import ClauseOptions, ClauseSplitter, normalize_for_speech
from engine.speech.tiny_checkpoint import write_tts_checkpoint

__all__ = [
    "ClauseOptions",
    "ClauseSplitter",
    "ReferenceStreamOptions",
    "ReplySynthesizer",
    "SpeechCheckpointError",
    "SpeechError",
    "SpeechHead",
    "SpeechInputError",
    "SpeechOptions",
    "StreamingOptions",
    "normalize_for_speech",
    "synthesize_text",
    "write_tts_checkpoint",
]
