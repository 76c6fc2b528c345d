"""Reading ``final.pt`` files: unwrapping, old-style weight-norm folding and strict key accounting."""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.speech.errors import SpeechCheckpointError

StateDict = dict[str, torch.Tensor]


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


def read_torch_file(path: Path) -> object:
    """``torch.load`` on CPU with tensors only (no arbitrary unpickling), with typed errors."""
    if not path.is_file():
        raise SpeechCheckpointError(f"missing {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise SpeechCheckpointError(f"{path} is not a readable torch checkpoint: {exc}") from exc


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
