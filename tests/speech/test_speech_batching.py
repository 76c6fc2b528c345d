"""Batched AR steps across sessions: same numbers as stepping alone, and real batches form."""

from __future__ import annotations

import threading

import numpy as np
import torch

from engine.speech import SpeechHead
from engine.speech.batching import StepBatcher
from engine.speech.decoder import DecodeState


def _states(head: SpeechHead, n: int) -> list[DecodeState]:
    return [head.decoder.start(head.table.conditioning([3 + i, 50 * i + 1, 9]), 40) for i in range(n)]


def _solo(head: SpeechHead, tokens: list[list[int]]) -> list[torch.Tensor]:
    out = []
    for i, state in enumerate(_states(head, len(tokens))):
        out.append(torch.stack([head.decoder.step(state, t) for t in tokens[i]]))
    return out


def test_step_batch_equals_separate_steps(head: SpeechHead) -> None:
    tokens = [[1025, 4, 8, 15], [1025, 16, 23, 42], [1025, 99, 98, 97]]
    solo = _solo(head, tokens)
    states = _states(head, 3)
    # Different cache lengths per row (prefixes differ), batched four steps in a row.
    batched = [head.decoder.step_batch(states, [t[j] for t in tokens]) for j in range(4)]
    for i in range(3):
        got = torch.stack([b[i] for b in batched])
        torch.testing.assert_close(got, solo[i], atol=1e-5, rtol=1e-5)
    assert [s.steps for s in states] == [4, 4, 4]
    assert [s.cache.length for s in states] == [13 + 4, 13 + 4, 13 + 4]


def test_concurrent_callers_are_combined_into_one_batch(head: SpeechHead) -> None:
    batcher = StepBatcher(head.decoder)
    n = 4
    tokens = [[1025, 10 + i, 20 + i] for i in range(n)]
    solo = _solo(head, tokens)
    states = _states(head, n)
    real_step_batch = head.decoder.step_batch
    first = threading.Event()

    def gated(states_, tokens_):  # hold the first batch until every other session is waiting
        if not first.is_set():
            first.set()
            with batcher._cond:
                assert batcher._cond.wait_for(lambda: len(batcher._pending) == n - 1, timeout=60)
        return real_step_batch(states_, tokens_)

    results: dict[int, list[torch.Tensor]] = {}

    def session(i: int) -> None:
        results[i] = [batcher.step(states[i], t) for t in tokens[i]]

    head.decoder.step_batch = gated
    try:
        leader = threading.Thread(target=session, args=(0,))
        leader.start()
        assert first.wait(timeout=60)
        others = [threading.Thread(target=session, args=(i,)) for i in range(1, n)]
        for t in others:
            t.start()
        for t in [leader, *others]:
            t.join(timeout=120)
    finally:
        del head.decoder.step_batch
    assert batcher.batch_sizes[0] == 1 and batcher.batch_sizes[1] >= n - 1  # the waiting callers went together
    assert sum(batcher.batch_sizes) == 3 * n
    for i in range(n):
        torch.testing.assert_close(torch.stack(results[i]), solo[i], atol=1e-5, rtol=1e-5)


def test_a_failing_batch_reaches_every_waiter(head: SpeechHead) -> None:
    batcher = StepBatcher(head.decoder)
    state = _states(head, 1)[0]
    try:
        batcher.step(state, 10**6)  # out-of-range token: the batch raises, the caller gets the error
    except (IndexError, RuntimeError) as exc:
        assert "index" in str(exc).lower() or "out of" in str(exc).lower()
    else:
        raise AssertionError("expected an error")
    assert not batcher._running and np.isfinite(batcher.step(state, 5).numpy()).all()
