"""Batching the AR steps of concurrent sessions without a scheduler thread (flat combining).

Each session thread calls :meth:`StepBatcher.step`. If no batch is running, the caller becomes the
leader: it takes every request waiting at that moment (its own included), runs them as one
:meth:`SpeechDecoder.step_batch`, hands each caller its logits and wakes them. Requests that arrive
while a batch runs wait on a condition and are taken by the next leader. A lone session pays one
uncontended lock; several sessions share one read of the weights per step instead of serialising.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from engine.speech.decoder import DecodeState, SpeechDecoder


@dataclass(slots=True, eq=False)  # identity semantics: holds tensors
class _Request:
    state: DecodeState
    token: int
    logits: torch.Tensor | None = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.logits is not None or self.error is not None


class StepBatcher:
    """Combines the AR steps of all sessions waiting at the same moment into one batched step."""

    def __init__(self, decoder: SpeechDecoder, max_batch: int = 32) -> None:
        self.decoder = decoder
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._running = False
        self.batch_sizes: list[int] = []
        """Size of every batch run so far (for benchmarks and tests)."""

    def step(self, state: DecodeState, token: int) -> torch.Tensor:
        """Same contract as :meth:`SpeechDecoder.step`; may run other sessions' steps alongside."""
        request = _Request(state, token)
        with self._cond:
            self._pending.append(request)
            self._cond.notify_all()
        while True:
            with self._cond:
                while self._running and not request.done:
                    self._cond.wait()
                if request.done:
                    break
                # Lead a batch: our own request first, then whoever else is waiting.
                self._pending.remove(request)
                batch = [request, *self._pending[: self.max_batch - 1]]
                del self._pending[: self.max_batch - 1]
                self._running = True
            self._run(batch)
        if request.error is not None:
            raise request.error
        assert request.logits is not None
        return request.logits

    def _run(self, batch: list[_Request]) -> None:
        try:
            logits = self.decoder.step_batch([r.state for r in batch], [r.token for r in batch])
            for r, row in zip(batch, logits, strict=True):
                r.logits = row
        except BaseException as exc:  # every waiter must learn of the failure, not hang
            for r in batch:
                r.error = exc
        finally:
            with self._cond:
                self.batch_sizes.append(len(batch))
                self._running = False
                self._cond.notify_all()
