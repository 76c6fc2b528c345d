"""Silero VAD through onnxruntime + numpy only (no torch on this path).

One :class:`SileroModel` (an ``InferenceSession`` with one thread) is shared by every stream of a
process; each stream keeps its own :class:`SileroStream` state (LSTM state + 64-sample context).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vad.options import CONTEXT, SAMPLE_RATE, WINDOW


def bundled_model_path() -> Path:
    """Path of ``silero_vad.onnx`` inside the installed ``silero-vad`` package.

    ``find_spec`` locates the package without executing its ``__init__`` (which imports torch).
    """
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the silero-vad package is not installed; it ships silero_vad.onnx")
    path = Path(spec.origin).parent / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"silero_vad.onnx not found at {path}")
    return path


class SileroModel:
    """The shared ONNX session. ``run`` is thread-safe (onnxruntime sessions are)."""

    def __init__(self, path: Path | None = None) -> None:
        opts = ort.SessionOptions()
        # One thread: VAD runs inline in socket reader threads; more threads only add contention.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # hides the harmless "Removing initializer" warnings at load
        self.path = path or bundled_model_path()
        self._session = ort.InferenceSession(str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def run(self, window_with_context: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """One step: ``[1, 576]`` float32 input and ``[2, 1, 128]`` state -> (probability, new state)."""
        prob, new_state = self._session.run(
            None, {"input": window_with_context, "state": state, "sr": self._sr}
        )
        return float(prob[0, 0]), new_state

    def stream(self) -> SileroStream:
        """A fresh per-stream state bound to this model."""
        return SileroStream(self)


_shared_lock = threading.Lock()
_shared_model: SileroModel | None = None


def shared_model() -> SileroModel:
    """The process-wide model (loaded on first use; +11 MB per session makes one per process right)."""
    global _shared_model
    with _shared_lock:
        if _shared_model is None:
            _shared_model = SileroModel()
        return _shared_model


class SileroStream:
    """Speech probabilities for one audio stream, fed exactly :data:`WINDOW` samples at a time."""

    def __init__(self, model: SileroModel) -> None:
        self._model = model
        self.reset()

    def reset(self) -> None:
        """Forget the stream's history (LSTM state and context)."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._input = np.zeros((1, CONTEXT + WINDOW), dtype=np.float32)

    def probability(self, window: np.ndarray) -> float:
        """Speech probability of one 512-sample float32 window in [-1, 1]."""
        if window.shape != (WINDOW,):
            raise ValueError(f"Silero needs exactly {WINDOW} samples per window at 16 kHz, got {window.shape}")
        # The first CONTEXT columns already hold the tail of the previous window.
        self._input[0, CONTEXT:] = window
        prob, self._state = self._model.run(self._input, self._state)
        self._input[0, :CONTEXT] = window[-CONTEXT:]
        return prob
