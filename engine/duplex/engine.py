"""``VitaEngine``: VITA-1.5 on two vLLM engines plus the shared speech head, behind ``engine.interface``.

One engine object serves every session: the vLLM engines batch the sessions' requests, the speech head
batches their AR steps; each session gets its own :class:`~engine.duplex.conversation.DuplexConversation`.
A vLLM engine whose core dies is restarted in place with backoff (:mod:`engine.llm.supervisor`) while the
other one serves; conversations keep their history, which they hold themselves.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch

from engine.duplex.conversation import DuplexConversation
from engine.duplex.loop import LoopThread
from engine.duplex.options import DuplexOptions
from engine.interface import Engine, EngineStatus, EventSink
from engine.llm.engine import LlmPool
from engine.llm.errors import EngineDeadError
from engine.llm.options import LlmOptions
from engine.llm.prompt import NOT_ADDRESSED, SPOKEN
from engine.llm.reply_text import TokenBytes
from engine.llm.state_tokens import StateTokens
from engine.llm.supervisor import EngineSupervisor, SupervisionOptions
from engine.speech.head import SpeechHead

log = logging.getLogger(__name__)


def check_judge_states(states: tuple[str, ...]) -> None:
    """Raise ValueError unless ``states`` is a non-empty subset of ☞ ☟."""
    if not states or any(s not in JUDGE_STATES for s in states):
        raise ValueError(f"judge_states must be a non-empty subset of ☞ ☟, got {states!r}")

JUDGE_STATES = (SPOKEN, NOT_ADDRESSED)
"""What the monitor chooses between in production: answer (☞) or ignore (☟)."""

RESTART_JOIN_S = 180.0
"""How long :meth:`VitaEngine.close` waits for an engine restart in progress (a start cannot be cut short)."""


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

    def __init__(self, llm_options: LlmOptions, options: DuplexOptions | None = None,
                 supervision: SupervisionOptions | None = None, clock: Callable[[], float] = time.monotonic,
                 *, judge_states: tuple[str, ...] = JUDGE_STATES) -> None:
        """``judge_states``: the states the monitor may choose among; tests and benches narrow it to one to
        force a verdict (not a production option, so not in ``DuplexOptions``)."""
        check_judge_states(judge_states)
        if llm_options.model_path is None:
            raise ValueError("LlmOptions.model_path is required")
        folder = Path(llm_options.model_path)
        self.options = options or DuplexOptions()
        self.llm_options = llm_options
        self.loop = LoopThread()
        self.pool: LlmPool | None = None
        self.supervisor: EngineSupervisor | None = None
        self._conversations: weakref.WeakSet[DuplexConversation] = weakref.WeakSet()
        try:
            # Built on the loop thread: AsyncLLM binds its output handler to the loop running where it is
            # made, and the caller's thread may be running some other loop (e.g. a test driver's).
            self.pool = self.loop.submit(_build_pool(llm_options)).result()
            self.supervisor = EngineSupervisor(self.pool.engines, supervision, clock)
            if self.supervisor.options.enabled:
                self.loop.submit(self.supervisor.run())
            tokenizer = self.pool.engines[0].tokenizer
            self.states = StateTokens.from_tokenizer(tokenizer)
            """Each state token's spelling (one token in Qwen2.5's vocabulary; several in others)."""
            self.judge = self.states.judge_plan(judge_states)
            """The monitor's verdict: the states' shared prefix, then one distinguishing token."""
            self.builder = self.pool.prompt_builder(self.states.ids)
            self.token_bytes = TokenBytes.from_tokenizer(tokenizer)
            self.tts_tokenizer = _LockedTokenizer(tokenizer)
            device = torch.device(self.options.speech_device) if self.options.speech_device else None
            if (device is None and not torch.cuda.is_available()) or (device is not None and device.type == "cpu"):
                torch.set_num_threads(self.options.cpu_threads)  # the AR decoder is latency-bound on CPU
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
        """A new conversation with its own history and roles; refused while no LLM engine can serve."""
        if not self.serving():
            raise EngineDeadError(self._none_ready())
        conv = DuplexConversation(self, sink)
        self._conversations.add(conv)
        return conv

    def serving(self) -> bool:
        """Whether at least one LLM engine can serve now (not dead, restarting or starting)."""
        return self.pool is not None and any(e.dead_reason() is None for e in self.pool.engines)

    def _none_ready(self) -> str:
        states = [s.state for s in self.statuses()]
        if any(s in ("restarting", "starting") for s in states):
            return "no LLM engine can serve right now: restarting after a failure, try again shortly"
        return "every LLM engine is dead; restart the server"

    def live_index(self, prefer: int | None = None, prefer_not: int | None = None) -> int:
        """Index of a live LLM engine: ``prefer`` if alive, else one other than ``prefer_not`` if possible."""
        pool = self.pool
        if pool is None:
            raise EngineDeadError("the engine is closed")
        alive = [i for i, e in enumerate(pool.engines) if e.dead_reason() is None]
        if not alive:
            raise EngineDeadError(self._none_ready())
        if prefer in alive:
            return prefer
        others = [i for i in alive if i != prefer_not]
        return min(others or alive, key=lambda i: pool.engines[i].load)

    def statuses(self) -> tuple[EngineStatus, ...]:
        """Each vLLM engine's state (starting, ready, restarting, dead) and restart counts."""
        supervisor = self.supervisor
        if self.pool is None or supervisor is None:
            return ()
        return supervisor.statuses()

    def health(self) -> dict[str, object]:
        """``ok`` while an LLM engine can serve; ``live`` while one serves or will after a restart."""
        if self.pool is None:
            return {"ok": False, "live": False, "error": "engine closed", "engines": []}
        statuses = self.statuses()
        return {"ok": any(s.state == "ready" for s in statuses), "live": any(s.state != "dead" for s in statuses),
                "engines": [dataclasses.asdict(s) for s in statuses], "conversations": len(self._conversations)}

    def begin_shutdown(self) -> None:
        """Stop restarting engines (the server is draining); replies in flight go on."""
        if self.supervisor is not None:
            self.supervisor.stop()

    def close(self) -> None:
        """Close every conversation, the loop and the LLM engines (idempotent)."""
        for conv in list(self._conversations):
            conv.close()
        if self.supervisor is not None:
            self.supervisor.stop()
            if not self.supervisor.join(RESTART_JOIN_S):
                log.warning("an engine restart still runs after %.0f s; closing anyway", RESTART_JOIN_S)
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
