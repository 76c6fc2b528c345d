"""The vLLM plugin stands alone: it imports nothing of the server, and its weight and input contracts hold."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from engine.tiny_checkpoint import TinySizes, release_shapes
from tests.conftest import REPO_ROOT
from vllm_patches.weights import CHECKPOINT_PREFIXES, is_skipped, module_name

# Import every module of the plugin (and run its entry point), then list what came along from this repo.
_IMPORT_EVERYTHING = """
import importlib, pkgutil, sys
import vllm_patches
for info in pkgutil.walk_packages(vllm_patches.__path__, "vllm_patches."):
    importlib.import_module(info.name)
vllm_patches.register()
print(" ".join(sorted(m for m in sys.modules if m.split(".")[0] in ("engine", "server", "vad"))))
"""


def test_plugin_imports_nothing_from_the_server_packages() -> None:
    # Run from the repo root, where ``engine`` is importable: a re-introduced import would succeed there
    # and be listed, not hidden behind an ImportError.
    done = subprocess.run([sys.executable, "-c", _IMPORT_EVERYTHING], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    leaked = done.stdout.split()
    assert leaked == [], f"vllm_patches pulls in server-side modules: {leaked}"


def test_no_renamed_prefix_starts_with_a_released_prefix() -> None:
    # vLLM's WeightsMapper applies every matching prefix in turn; module_name stops at the first match.
    # They agree only while no new name could be renamed a second time.
    olds = [old for old, _ in CHECKPOINT_PREFIXES]
    assert [(old, new) for old in olds for _, new in CHECKPOINT_PREFIXES if new.startswith(old)] == []


def test_weights_mapper_renames_like_the_plain_torch_table() -> None:
    from vllm_patches.model import VitaDuplexForConditionalGeneration

    mapper = VitaDuplexForConditionalGeneration.hf_to_vllm_mapper
    keys = [k for k in release_shapes(TinySizes()) if not is_skipped(k)]
    assert len(keys) > 50
    assert {k: mapper.map_name(k) for k in keys} == {k: module_name(k) for k in keys}


def test_multimodal_inputs_are_shape_checked() -> None:
    from vllm_patches.model import VitaAudioFeatureInputs, VitaImagePixelInputs

    tiles = {"h": 448, "w": 448}
    VitaImagePixelInputs(pixel_values=torch.zeros(3, 3, 448, 448), num_tiles=torch.tensor([1, 2]),
                         resolve_bindings=tiles)
    with pytest.raises(ValueError, match="pixel_values"):
        VitaImagePixelInputs(pixel_values=torch.zeros(3, 3, 224, 224), num_tiles=torch.tensor([3]),
                             resolve_bindings=tiles)
    with pytest.raises(ValueError, match="num_tiles"):
        VitaImagePixelInputs(pixel_values=torch.zeros(3, 3, 448, 448), resolve_bindings=tiles)
    VitaAudioFeatureInputs(audio_features=torch.zeros(40, 80), num_frames=torch.tensor([10, 30]),
                           resolve_bindings={"nmb": 80})
    with pytest.raises(ValueError, match="audio_features"):
        VitaAudioFeatureInputs(audio_features=torch.zeros(40, 64), num_frames=torch.tensor([40]),
                               resolve_bindings={"nmb": 80})
