"""Reading ``final.pt`` files: unwrapping, old-style weight-norm folding and strict key accounting."""

from __future__ import annotations

import argparse
import logging
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.speech.errors import SpeechCheckpointError

StateDict = dict[str, torch.Tensor]
log = logging.getLogger(__name__)

TRUST_OPTION = "--trust_checkpoint_pickles (SpeechOptions.trust_checkpoint_pickles)"
"""How the error message names the opt-in to full unpickling."""


def _numpy_scalar_rebuilder() -> Any:
    try:
        from numpy._core.multiarray import scalar  # numpy >= 1.26 / 2.x
    except ImportError:  # pragma: no cover - numpy < 1.26
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    return scalar


def _training_globals() -> list[Any]:
    """The pickled objects besides tensors that Freeze-Omni/wenet-style training writes into ``final.pt``.

    Their training loops save ``{"model": state_dict, …}`` plus bookkeeping. ``torch.load(weights_only=True)``
    already accepts dicts, lists, tuples, str/int/float/bool/None, ``collections.OrderedDict`` (what
    ``state_dict()`` returns), ``torch.Size``/dtypes and tensors, so ``torch.optim`` state
    (``{"state": {i: {"step", "exp_avg", …}}, "param_groups": [...]}``) and HiFi-GAN style
    ``{"steps": int, "epoch": int}`` need nothing. Only these are added, none of which runs code:
    """
    scalar = _numpy_scalar_rebuilder()
    return [
        argparse.Namespace,  # ckpt["args"]: the training command line (wenet/fairseq habit); attributes only
        (scalar, "numpy.core.multiarray.scalar"),  # numpy scalars (epoch, step, loss) as numpy 1.x pickles them
        (scalar, "numpy._core.multiarray.scalar"),  # … and as numpy 2.x pickles them
        np.dtype,  # the scalar's dtype, rebuilt from its type code ('<i8', …)
        # numpy >= 1.25 rebuilds that dtype as an instance of its class (np.dtypes.Int64DType …), and the
        # weights-only unpickler sets its state only for allow-listed classes: the dtypes of such bookkeeping
        *(type(np.dtype(t)) for t in (np.int64, np.int32, np.float64, np.float32, np.bool_)),
    ]


def _global_name(entry: object | tuple[object, str]) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"  # type: ignore[attr-defined]


def _refused_globals(path: Path, exc: BaseException) -> list[str]:
    """Globals of ``path`` outside torch's default allow-list and ours (empty: not a pickling matter)."""
    allowed = {_global_name(g) for g in _training_globals()}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError):
        names = []
    refused = [n for n in names if n not in allowed]
    if not refused:  # e.g. a legacy (non-zip) file: take the name from torch's message
        found = re.findall(r"GLOBAL (\S+) was not an allowed global|but got <class '([^']+)'>", str(exc))
        refused = [a or b for a, b in found]
    return refused


@dataclass(frozen=True, slots=True)
class LoadReport:
    """Which checkpoint tensors a loader used, which it knowingly skipped and which it did not know."""

    consumed: tuple[str, ...]
    skipped: tuple[str, ...]
    """Keys present in the released files but unused at inference (e.g. ``layers_prefix.*``)."""
    unexpected: tuple[str, ...]
    """Keys nobody asked for; the reference ignores them too, so they are only reported."""


def freeze_for_inference(module: nn.Module) -> None:
    """Eval mode and no gradients: the weights are shared read-only between sessions."""
    module.eval()
    module.requires_grad_(False)


def read_torch_file(path: Path, trust_pickles: bool = False) -> object:
    """``torch.load`` on CPU without arbitrary unpickling, with typed errors.

    Tensors-only first; then with the short allow-list of :func:`_training_globals` (numpy scalars,
    ``argparse.Namespace``). A file holding anything else is refused with a :class:`SpeechCheckpointError`
    naming the file, the refused globals and the option; with ``trust_pickles`` it is unpickled in full
    (which can run code from the file) after a WARNING naming the file.
    """
    if not path.is_file():
        raise SpeechCheckpointError(f"missing {path}")
    unreadable = f"{path} is not a readable torch checkpoint"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # pickled objects besides tensors: try the allow-list below
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise SpeechCheckpointError(f"{unreadable}: {exc}") from exc
    try:
        with torch.serialization.safe_globals(_training_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        refused = _refused_globals(path, exc) if isinstance(exc, pickle.UnpicklingError) else []
        if not refused:
            raise SpeechCheckpointError(f"{unreadable}: {exc}") from exc
        if not trust_pickles:
            raise SpeechCheckpointError(
                f"{path} holds pickled objects that are not plain weights or training bookkeeping; refused "
                f"global(s): {', '.join(refused)}. Unpickling them could run code from the file. If you trust "
                f"this file, start with {TRUST_OPTION} to unpickle it in full"
            ) from None
    log.warning("unpickling %s in full (it holds %s) because trust_checkpoint_pickles is set: this can run "
                "code from the file", path, ", ".join(refused))
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # arbitrary unpickling can fail in arbitrary ways (missing class, …)
        raise SpeechCheckpointError(f"{path}: full unpickling failed ({type(exc).__name__}: {exc})") from exc


def as_state_dict(obj: object, path: Path, key: str | None = None) -> StateDict:
    """Return ``obj[key]`` (or ``obj['model']`` if present, or ``obj``) checked to map names to tensors."""
    if isinstance(obj, Mapping) and key is not None:
        if key not in obj:
            raise SpeechCheckpointError(f"{path}: no {key!r} entry (found {sorted(map(str, obj))[:8]})")
        obj = obj[key]
    elif isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]  # the released decoder wraps its weights as {"model": state_dict}
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise SpeechCheckpointError(f"{path}: expected a mapping of parameter names to tensors")
    return dict(obj)


def fold_weight_norm(weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
    """Old-style ``torch.nn.utils.weight_norm`` (dim 0) folded: ``W = g · v / ‖v‖``, norm over dims ≥ 1."""
    dims = tuple(range(1, weight_v.dim()))
    v = weight_v.float()
    return (weight_g.float() * v / v.norm(dim=dims, keepdim=True)).to(weight_v.dtype)


def fold_all_weight_norms(state: StateDict, path: Path) -> tuple[StateDict, dict[str, tuple[str, str]]]:
    """Replace every ``X.weight_g`` + ``X.weight_v`` pair by ``X.weight``; return the origin of each fold."""
    out: StateDict = {}
    origins: dict[str, tuple[str, str]] = {}
    for name, tensor in state.items():
        if name.endswith(".weight_g") or name.endswith(".weight_v"):
            stem = name[: -len("_g")]
            g_name, v_name = stem + "_g", stem + "_v"
            if g_name not in state or v_name not in state:
                raise SpeechCheckpointError(f"{path}: {name} has no matching weight_g/weight_v partner")
            if stem in origins:
                continue
            g, v = state[g_name], state[v_name]
            if g.shape != (v.shape[0],) + (1,) * (v.dim() - 1):
                raise SpeechCheckpointError(f"{path}: {g_name} shape {tuple(g.shape)} does not fit {v_name}")
            out[stem] = fold_weight_norm(g, v)
            origins[stem] = (g_name, v_name)
        else:
            out[name] = tensor
    return out, origins


def load_strict(
    module: nn.Module,
    state: StateDict,
    path: Path,
    skip_prefixes: Iterable[str] = (),
    origins: Mapping[str, tuple[str, ...]] | None = None,
) -> LoadReport:
    """Copy every parameter of ``module`` from ``state`` by exact name and shape; missing ones are errors."""
    skip = tuple(skip_prefixes)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise SpeechCheckpointError(f"{path}: {len(missing)} tensors missing, e.g. {missing[:5]}")
    for name, ref in expected.items():
        if tuple(state[name].shape) != tuple(ref.shape):
            raise SpeechCheckpointError(
                f"{path}: {name} has shape {tuple(state[name].shape)}, the config needs {tuple(ref.shape)}"
            )
        if not torch.isfinite(state[name]).all():
            raise SpeechCheckpointError(f"{path}: {name} holds NaN or infinite values")
    module.load_state_dict({k: state[k] for k in expected}, strict=True)
    origins = origins or {}
    consumed = sorted(o for k in expected for o in origins.get(k, (k,)))
    rest = [k for k in state if k not in expected]
    skipped = sorted(o for k in rest if k.startswith(skip) for o in origins.get(k, (k,)))
    unexpected = sorted(o for k in rest if not k.startswith(skip) for o in origins.get(k, (k,)))
    return LoadReport(tuple(consumed), tuple(skipped), tuple(unexpected))
