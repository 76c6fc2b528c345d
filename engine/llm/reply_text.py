"""Reply text from generated token ids, clean: no special tokens, no broken UTF-8, no control characters.

vLLM's own detokenizer turns every generated id into text, added tokens such as ``<tool_call>`` (which
Qwen2.5 does not mark special) included, and emits U+FFFD for byte sequences that are not UTF-8. A
random or confused model produces both. Here each id maps to the bytes it stands for (added tokens and
the embedding's padding rows to nothing); an incremental UTF-8 decoder holds an incomplete multi-byte
sequence until its last byte arrives and drops bytes that can never form a character; state tokens and
control characters are removed wherever they appear.
"""

from __future__ import annotations

import codecs
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from engine.llm.prompt import STATE_TOKENS

_KEEP_CONTROLS = {"\n"}


class _Tokenizer(Protocol):
    def __len__(self) -> int: ...

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...

    def decode(self, ids: list[int], **kwargs: object) -> str: ...


def _byte_level_table() -> dict[str, int]:
    """Inverse of the GPT-2/Qwen byte → printable-character table of byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {chr(b): b for b in printable}, 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_BYTE_OF = _byte_level_table()


@dataclass(frozen=True, slots=True)
class TokenBytes:
    """The bytes each token id stands for; ``None`` for ids that never reach the reply text."""

    table: tuple[bytes | None, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer: _Tokenizer) -> TokenBytes:
        """Build the table once per tokenizer (added tokens → ``None``)."""
        size = len(tokenizer)
        added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
        table: list[bytes | None] = []
        for i, tok in enumerate(tokens):
            if i in added or tok is None:
                table.append(None)
            elif all(ch in _BYTE_OF for ch in tok):  # byte-level BPE spelling
                table.append(bytes(_BYTE_OF[ch] for ch in tok))
            else:  # another kind of vocabulary: trust the tokenizer's own decoding of the piece
                table.append(tokenizer.decode([i]).encode("utf-8"))
        return cls(tuple(table))

    def bytes_of(self, token_id: int) -> bytes:
        """The token's bytes; ids past the table (embedding padding rows) give nothing."""
        return (self.table[token_id] if 0 <= token_id < len(self.table) else None) or b""


def clean(text: str) -> str:
    """``text`` without state tokens, U+FFFD and control characters (newlines kept, tabs as spaces)."""
    out = []
    for ch in text:
        if ch in STATE_TOKENS or ch == "\ufffd":
            continue
        if ch == "\t":
            out.append(" ")
        elif ch in _KEEP_CONTROLS or unicodedata.category(ch) != "Cc":
            out.append(ch)
    return "".join(out)


class ReplyTextDecoder:
    """Incremental ids → clean text for one reply (leading whitespace dropped)."""

    def __init__(self, token_bytes: TokenBytes) -> None:
        self._bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._started = False

    def feed(self, token_ids: Iterable[int]) -> str:
        """Visible text completed by these ids (possibly empty)."""
        return self._visible(self._utf8.decode(b"".join(self._bytes.bytes_of(int(i)) for i in token_ids)))

    def flush(self) -> str:
        """Whatever is complete at the end of the reply (an unfinished character is dropped)."""
        return self._visible(self._utf8.decode(b"", final=True))

    def _visible(self, text: str) -> str:
        text = clean(text)
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        return text
