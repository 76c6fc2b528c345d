"""Conditioning for the speech decoder: LLM input-embedding rows of the text, read from safetensors.

The demo instantiated the whole 7B model to get one table. Here only the needed rows of
``model.embed_tokens.weight`` are read (lazily, through ``safe_open`` slices) and upcast to fp32, then
cut token-major into ``4N × d/4`` slices (docs/model.md, "Speech conditioning").
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open

from engine.speech.errors import SpeechCheckpointError, SpeechInputError

EMBED_KEY = "model.embed_tokens.weight"
SLICES_PER_TOKEN = 4


class TextTokenizer(Protocol):
    """The part of a ``transformers`` tokenizer the speech head uses."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def _embedding_file(folder: Path) -> Path:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return folder / weight_map[EMBED_KEY]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SpeechCheckpointError(f"{index} does not map {EMBED_KEY}: {exc}") from exc
    single = folder / "model.safetensors"
    if single.is_file():
        return single
    raise SpeechCheckpointError(f"no model.safetensors(.index.json) in {folder}")


class EmbeddingTable:
    """Row reader for the LLM's input-embedding table; holds the file open, never the whole table."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise SpeechCheckpointError(f"missing {path}")
        try:
            self._file: Any = safe_open(str(path), framework="pt", device="cpu")
            if EMBED_KEY not in self._file.keys():
                raise SpeechCheckpointError(f"{path} has no {EMBED_KEY}")
            self._slice = self._file.get_slice(EMBED_KEY)
        except SafetensorError as exc:
            raise SpeechCheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
        shape = self._slice.get_shape()
        if len(shape) != 2 or shape[1] % SLICES_PER_TOKEN:
            raise SpeechCheckpointError(f"{EMBED_KEY} has shape {shape}; its width must split into 4 slices")
        self.vocab_size, self.hidden_size = int(shape[0]), int(shape[1])
        self._lock = threading.Lock()  # safetensors slice reads share one file handle
        self.path = path

    @classmethod
    def from_checkpoint(cls, folder: Path) -> EmbeddingTable:
        """Find the tensor via ``model.safetensors.index.json`` if present, else ``model.safetensors``."""
        return cls(_embedding_file(Path(folder)))

    def rows(self, token_ids: Sequence[int]) -> torch.Tensor:
        """fp32 rows [N, hidden] for ``token_ids`` (exact upcast from the stored dtype)."""
        ids = [int(t) for t in token_ids]
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise SpeechInputError(f"token ids outside the {self.vocab_size}-entry vocabulary: {bad[:5]}")
        with self._lock:
            return torch.cat([self._slice[t : t + 1] for t in ids]).float() if ids else torch.zeros(0, self.hidden_size)

    def conditioning(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Rows reshaped token-major to [4N, hidden/4]: token k gives positions 4k..4k+3."""
        if not token_ids:
            raise SpeechInputError("nothing to speak: no token ids")
        return self.rows(token_ids).reshape(-1, self.hidden_size // SLICES_PER_TOKEN)


def token_ids_for(text: str, tokenizer: TextTokenizer) -> list[int]:
    """Token ids of ``text`` as the demo made them (LLM tokenizer, no BOS/EOS added)."""
    return list(tokenizer.encode(text, add_special_tokens=False))
