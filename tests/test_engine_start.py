"""How the pool starts its engines: on CPU all at once (a failed one takes the others down), on a GPU in turn.

The engines here are stand-ins (a real start is tested in test_vllm_engine.py): what is checked is the
pool's own scheduling of the starts.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import engine.llm.engine as llm_engine
from engine.llm.options import LlmOptions


class _Recorder:
    """Stand-in ``LlmEngine`` factory: records which starts overlapped and which engines were closed."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.inside = 0
        self.most_inside = 0
        self.closed: list[str] = []
        self.lock = threading.Lock()
        self.both_in = threading.Barrier(2, timeout=2)

    def __call__(self, resolved, options, *, name: str, device: str | None = None):
        recorder = self
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            try:
                self.both_in.wait()  # waits for the other start; times out when the starts take turns
            except threading.BrokenBarrierError:
                pass
            if name == self.fail:
                raise RuntimeError(f"{name} failed to start")
        finally:
            with self.lock:
                self.inside -= 1

        class Engine:
            def close(self) -> None:
                recorder.closed.append(name)

        engine = Engine()
        engine.name = name  # type: ignore[attr-defined]
        return engine


def _options(folder: Path) -> LlmOptions:
    return LlmOptions(model_path=folder, num_engines=2, dtype="float32", enforce_eager=True)


@pytest.mark.parametrize(("cuda", "at_once"), [(False, 2), (True, 1)], ids=["cpu-together", "gpu-in-turn"])
def test_engines_start_together_on_cpu_and_in_turn_on_a_gpu(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
                                                             cuda: bool, at_once: int) -> None:
    rec = _Recorder()
    monkeypatch.setattr(llm_engine, "LlmEngine", rec)
    monkeypatch.setattr("torch.cuda.is_available", lambda: cuda)
    pool = llm_engine.LlmPool(_options(tiny_checkpoint))
    assert rec.most_inside == at_once
    assert [e.name for e in pool.engines] == ["llm0", "llm1"]  # in order, whichever finished first


def test_a_failed_start_closes_the_engine_that_started_and_raises(tiny_checkpoint: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _Recorder(fail="llm1")
    monkeypatch.setattr(llm_engine, "LlmEngine", rec)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(RuntimeError, match="llm1 failed to start"):
        llm_engine.LlmPool(_options(tiny_checkpoint))
    assert rec.closed == ["llm0"]
