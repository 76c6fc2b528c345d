"""``VitaEngine``: VITA-1.5 on two vLLM engines plus the shared speech head, behind ``engine.interface``.

One engine object serves every session: the vLLM engines batch the sessions' requests, the speech head
batches their AR steps; each session gets its own :class:`~engine.duplex.conversation.DuplexConversation`.
"""

from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path

import torch

from engine.duplex.conversation import DuplexConversation
from engine.duplex.loop import LoopThread
from engine.duplex.options import DuplexOptions
from engine.interface import Engine, EventSink
from engine.llm.engine import LlmPool
from engine.llm.errors import EngineDeadError
from engine.llm.options import LlmOptions
from engine.llm.reply_text import TokenBytes
from engine.llm.state_tokens import StateTokens
from engine.speech.head import SpeechHead

log = logging.getLogger(__name__)


class _LockedTokenizer:
    """The LLM tokenizer for speech workers: one encode at a time (the Rust tokenizer is not re-entrant)."""

    def __init__(self, tokenizer: object) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    def encode(self, text: str, add_special_tokens: bool = False, **kwargs: object) -> list[int]:
        with self._lock:
            return self._tokenizer.encode(text, add_special_tokens=add_special_tokens, **kwargs)  # type: ignore[attr-defined]


class VitaEngine(Engine):
    """The full-duplex VITA-1.5 engine: LLM pool, speech head and the loop thread that drives them."""

    def __init__(self, llm_options: LlmOptions, options: DuplexOptions | None = None) -> None:
        self.options = options or DuplexOptions()
        if self.options.history_turns > llm_options.history_turns:
            raise ValueError("history_turns cannot exceed the LLM options' history_turns (audio slots per prompt)")
        self.loop = LoopThread()
        self.pool: LlmPool | None = None
        self._conversations: weakref.WeakSet[DuplexConversation] = weakref.WeakSet()
        try:
            # Built on the loop thread: AsyncLLM binds its output handler to the loop running where it is
            # made, and the caller's thread may be running some other loop (e.g. a test driver's).
            self.pool = self.loop.submit(_build_pool(llm_options)).result()
            tokenizer = self.pool.engines[0].tokenizer
            self.states = StateTokens.from_tokenizer(tokenizer)
            """Each state token's spelling (one token in Qwen2.5's vocabulary; several in others)."""
            self.judge = self.states.judge_plan(self.options.judge_states)
            """The monitor's verdict: the states' shared prefix, then one distinguishing token."""
            self.builder = self.pool.prompt_builder(self.states.ids)
            self.token_bytes = TokenBytes.from_tokenizer(tokenizer)
            self.tts_tokenizer = _LockedTokenizer(tokenizer)
            device = torch.device(self.options.speech_device) if self.options.speech_device else None
            if (device is None and not torch.cuda.is_available()) or (device is not None and device.type == "cpu"):
                torch.set_num_threads(self.options.cpu_threads)  # the AR decoder is latency-bound on CPU
            folder = Path(llm_options.model_path)
            self.head = SpeechHead.from_checkpoint(folder / "vita_tts_ckpt", folder, device, self.options.speech)
        except BaseException:
            self.close()
            raise
        self.notice_text: str | None = None
        """Shown to every user (the default run sets it: random weights)."""

    def notice(self) -> str | None:
        """See :attr:`notice_text`."""
        return self.notice_text

    def open_conversation(self, sink: EventSink) -> DuplexConversation:
        """A new conversation with its own history and roles; refused while no LLM engine lives."""
        if self.pool is None or not self.pool.health()["ok"]:
            raise EngineDeadError("every LLM engine is dead; restart the server")
        conv = DuplexConversation(self, sink)
        self._conversations.add(conv)
        return conv

    def live_index(self, prefer: int | None = None, prefer_not: int | None = None) -> int:
        """Index of a live LLM engine: ``prefer`` if alive, else one other than ``prefer_not`` if possible."""
        assert self.pool is not None
        alive = [i for i, e in enumerate(self.pool.engines) if e.health()["ok"]]
        if not alive:
            raise EngineDeadError("every LLM engine is dead; restart the server")
        if prefer in alive:
            return prefer  # type: ignore[return-value]
        others = [i for i in alive if i != prefer_not]
        return min(others or alive, key=lambda i: self.pool.engines[i].load)  # type: ignore[union-attr]

    def health(self) -> dict[str, object]:
        """LLM pool health plus open conversations."""
        if self.pool is None:
            return {"ok": False, "error": "engine closed"}
        return {**self.pool.health(), "conversations": len(self._conversations)}

    def close(self) -> None:
        """Close every conversation, the loop and the LLM engines (idempotent)."""
        for conv in list(self._conversations):
            conv.close()
        pool, self.pool = self.pool, None
        if pool is not None:
            try:
                self.loop.submit(_close_pool(pool)).result(60)
            except Exception:  # the loop may already be gone; close where we are
                pool.close()
        self.loop.close()


async def _build_pool(options: LlmOptions) -> LlmPool:
    return LlmPool(options)


async def _close_pool(pool: LlmPool) -> None:
    pool.close()
