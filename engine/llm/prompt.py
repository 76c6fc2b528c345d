"""Prompt building for VITA-1.5: ChatML, the reference system prompts, state tokens, history, budget.

The prompt is built as token ids (as the reference does): template text is tokenized with its special
tokens, user/assistant content with special tokens split (so typed text cannot forge ``<|im_end|>``),
and **one** placeholder id is inserted per image / audio clip; vLLM expands each to its embedding count.
Unlike the reference, every turn keeps its ``<|im_start|>user`` header (the reference deletes them from
the second turn on), and history is per conversation, not global.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from PIL import Image

from engine.llm.errors import ImageInputError, InputError, PromptTooLongError
from engine.llm.media import decode_image, validate_waveform
from vllm_patches.audio_features import num_audio_tokens
from vllm_patches.image_preprocess import plan_tiles

SPOKEN, TYPED, NOT_ADDRESSED = "☞", "☜", "☟"
"""State tokens: the reply's first character says whether it answers speech, text, or nobody."""
STATE_TOKENS = (SPOKEN, TYPED, NOT_ADDRESSED)

_SYSTEM_BASE = (
    "You are an AI robot and your name is Vita.\n"
    "- You are a multimodal large language model developed by the open source community. "
    "Your aim is to be helpful, honest and harmless.\n"
    "- You support the ability to communicate fluently and answer user questions in multiple languages "
    "of the user's choice.\n"
    "- If the user corrects the wrong answer you generated, you will apologize and discuss the correct "
    "answer with the user."
)
_SYSTEM_MEDIA = (
    "\n- You must answer the question strictly according to the content of the {seen} given by the user, "
    "and it is strictly forbidden to answer the question without the content of the {seen}. "
    "Please note that you are seeing the {seen}, not the {other}."
)
Modality = Literal["audio", "image", "video"]
SYSTEM_PROMPTS: dict[Modality, str] = {
    "audio": _SYSTEM_BASE,
    "image": _SYSTEM_BASE + _SYSTEM_MEDIA.format(seen="image", other="video"),
    "video": _SYSTEM_BASE + _SYSTEM_MEDIA.format(seen="video", other="image"),
}
"""The reference's three system prompts, chosen by the current turn's media (video > image > audio)."""


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the builder uses."""

    def encode(self, text: str, add_special_tokens: bool = ..., **kwargs: object) -> list[int]: ...


@dataclass(frozen=True, slots=True)
class UserTurn:
    """What the user gave in one turn: speech, camera frames (oldest first) and/or typed text."""

    audio: np.ndarray | None = None
    images: tuple[Image.Image | bytes, ...] = ()
    text: str | None = None

    @property
    def state_token(self) -> str:
        """The state token a reply to this turn starts with (☞ for speech, ☜ for typed text)."""
        return SPOKEN if self.audio is not None else TYPED


@dataclass(frozen=True, slots=True)
class _Exchange:
    """A finished exchange kept as history: the user's speech/text and the reply (images are dropped)."""

    audio: np.ndarray | None
    text: str | None
    reply: str


@dataclass(frozen=True, slots=True)
class BuiltPrompt:
    """What to hand to vLLM: token ids with one placeholder per item, the items, the expanded length."""

    token_ids: list[int]
    images: list[Image.Image]
    audios: list[np.ndarray]
    expanded_length: int
    history_used: int


@dataclass(frozen=True, slots=True)
class PromptIds:
    """Placeholder and template ids of the served checkpoint."""

    image: int
    audio: int
    im_end: int


@dataclass
class ConversationHistory:
    """One conversation's past exchanges (in memory only), newest last, at most ``max_turns``."""

    max_turns: int = 4
    _exchanges: deque[_Exchange] = field(default_factory=deque)

    def add(self, turn: UserTurn, reply: str) -> None:
        """Remember a finished exchange; ``reply`` without its state token (it is re-added when building)."""
        if self.max_turns <= 0:
            return
        self._exchanges.append(_Exchange(turn.audio, turn.text, reply))
        while len(self._exchanges) > self.max_turns:
            self._exchanges.popleft()

    def plus(self, turn: UserTurn, reply: str) -> ConversationHistory:
        """A copy with one more exchange (this history is unchanged)."""
        copy = ConversationHistory(self.max_turns, deque(self._exchanges))
        copy.add(turn, reply)
        return copy

    def clear(self) -> None:
        """Forget everything."""
        self._exchanges.clear()

    def __len__(self) -> int:
        return len(self._exchanges)

    @property
    def exchanges(self) -> tuple[_Exchange, ...]:
        """The remembered exchanges, oldest first."""
        return tuple(self._exchanges)


class PromptBuilder:
    """Builds ChatML prompts as token ids, trimming history to the token budget."""

    def __init__(self, tokenizer: Tokenizer, ids: PromptIds, *, budget: int, max_images: int,
                 max_dynamic_patch: int = 1, state_ids: dict[str, tuple[int, ...]] | None = None) -> None:
        self.tokenizer = tokenizer
        self.state_ids = state_ids or {}
        """State token spellings; a past reply starts with its state's ids (encoding "☞" and the reply's
        first word together could merge them into other tokens). Missing: encoded with the text."""
        self.ids = ids
        self.budget = budget
        self.max_images = max_images
        self.max_dynamic_patch = max_dynamic_patch

    def _template(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _content(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
        # A content token equal to a placeholder id would break the placeholder count: drop it.
        return [i for i in ids if i not in (self.ids.image, self.ids.audio)]

    def _user_block(self, audio: np.ndarray | None, n_images: int, text: str | None) -> tuple[list[int], int]:
        """``<|im_start|>user\\n`` images, text, audio ``<|im_end|>\\n``; returns ids and media tokens."""
        ids = self._template("<|im_start|>user\n") + [self.ids.image] * n_images
        if text:
            ids += self._content(text)
        media = 0
        if audio is not None:
            ids.append(self.ids.audio)
            media += num_audio_tokens(audio.size) - 1
        return ids + self._template("<|im_end|>\n"), media

    def build(self, turn: UserTurn, history: ConversationHistory | None = None) -> BuiltPrompt:
        """The prompt for ``turn`` after ``history``; typed errors for bad media or an over-long turn."""
        if turn.audio is None and not turn.images and not (turn.text and turn.text.strip()):
            raise InputError("empty turn: no audio, image or text")
        audio = validate_waveform(turn.audio) if turn.audio is not None else None
        if len(turn.images) > self.max_images:
            raise ImageInputError(f"{len(turn.images)} images in one turn; at most {self.max_images} allowed")
        images = [decode_image(i) for i in turn.images]
        image_tokens = sum(plan_tiles(*im.size, max_num=self.max_dynamic_patch).num_tokens - 1 for im in images)
        modality: Modality = "video" if len(images) > 1 else "image" if images else "audio"
        system = self._template(f"<|im_start|>system\n{SYSTEM_PROMPTS[modality]}<|im_end|>\n")
        current, audio_tokens = self._user_block(audio, len(images), turn.text)
        tail = self._template("<|im_start|>assistant\n")
        fixed = len(system) + len(current) + len(tail) + image_tokens + audio_tokens
        if fixed > self.budget:
            raise PromptTooLongError(f"this turn needs {fixed} prompt tokens; the budget is {self.budget}")
        blocks: list[tuple[list[int], np.ndarray | None, int]] = []
        used = fixed
        for past in reversed(history.exchanges if history else ()):
            user, media = self._user_block(past.audio, 0, past.text)
            state = SPOKEN if past.audio is not None else TYPED
            if state in self.state_ids:
                answer = list(self.state_ids[state]) + self._content(past.reply)
            else:
                answer = self._content(state + past.reply)
            reply = self._template("<|im_start|>assistant\n") + answer + self._template("<|im_end|>\n")
            cost = len(user) + len(reply) + media
            if used + cost > self.budget:
                break  # the oldest exchanges go first
            used += cost
            blocks.append((user + reply, past.audio, cost))
        blocks.reverse()
        token_ids = system + [t for block, _, _ in blocks for t in block] + current + tail
        audios = [a for _, a, _ in blocks if a is not None] + ([audio] if audio is not None else [])
        return BuiltPrompt(token_ids, images, audios, used, len(blocks))
