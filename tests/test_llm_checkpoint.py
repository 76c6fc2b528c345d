"""Checkpoint resolution (release and demo layouts), clear errors, and the weight loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.llm import shipped_config as shipped
from engine.llm.checkpoint import resolve_checkpoint
from engine.llm.errors import CheckpointError
from engine.tiny_checkpoint import AUDIO_ENCODER_DIR, TinySizes, release_shapes
from vllm_patches.audio_features import Cmvn
from vllm_patches.torch_model import VitaTorchModel, load_torch_model
from vllm_patches.weights import is_skipped, module_name


def test_release_layout_geometry_comes_from_config_and_tensor_shapes(tiny_checkpoint: Path) -> None:
    resolved = resolve_checkpoint(tiny_checkpoint)
    sizes = TinySizes()
    cfg = resolved.config
    assert resolved.layout == "release" and resolved.has_tokenizer
    assert cfg["text_config"]["hidden_size"] == sizes.hidden
    assert cfg["text_config"]["num_key_value_heads"] == sizes.kv_heads
    assert (cfg["vision_config"]["hidden_size"], cfg["vision_config"]["num_hidden_layers"]) == (sizes.vit_hidden, 2)
    assert cfg["vision_config"]["num_attention_heads"] == 1 and cfg["vision_config"]["image_size"] == 448
    assert cfg["audio_config"]["num_attention_heads"] == sizes.audio_heads
    assert cfg["audio_config"]["intermediate_size"] == sizes.audio_intermediate
    # The release has no placeholder tokens: the demo's ids, ordinary BPE ids of the vocabulary.
    assert (cfg["image_token_index"], cfg["audio_token_index"]) == (51000, 51001)
    assert cfg["dtype"] == "bfloat16"  # what the release declares; vLLM's dtype="auto" serves it
    # CMVN comes from the exact global_cmvn file, not from the checkpoint's bf16 copies of it.
    stats = json.loads((tiny_checkpoint / AUDIO_ENCODER_DIR / "global_cmvn").read_text())
    from_file = Cmvn.from_kaldi_stats(stats["mean_stat"], stats["var_stat"], stats["frame_num"])
    np.testing.assert_array_equal(np.float32(cfg["cmvn_means"]), from_file.means)
    np.testing.assert_array_equal(np.float32(cfg["cmvn_istds"]), from_file.istds)


def test_cmvn_falls_back_to_the_bf16_buffers_with_a_warning(copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    exact = resolve_checkpoint(copy).config
    (copy / AUDIO_ENCODER_DIR / "global_cmvn").unlink()
    with caplog.at_level("WARNING"):
        fallback = resolve_checkpoint(copy).config
    assert "no exact CMVN statistics" in caplog.text and "bfloat16" in caplog.text
    drift = np.abs(np.float32(fallback["cmvn_means"]) - np.float32(exact["cmvn_means"])).max()
    assert 0 < drift < 0.1  # bf16 keeps 8 bits: means of 12…17 move by up to 2^-4


def test_demo_prepared_folder_resolves_to_the_same_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The public demo's folder: release config renamed to origin_config.json + the vLLM-side config.json."""
    from engine.tiny_checkpoint import write_tiny_checkpoint

    release = resolve_checkpoint(tiny_checkpoint)
    demo = write_tiny_checkpoint(tmp_path / "demo_VITA_ckpt", seed=0, layout="demo")
    resolved = resolve_checkpoint(demo, max_dynamic_patch=1)
    assert resolved.layout == "demo"
    assert resolved.config["max_dynamic_patch"] == 1  # the real-time setting, whatever the file says
    for key in ("image_token_index", "audio_token_index", "dtype"):
        assert resolved.config[key] == release.config[key], key
    for tower in ("vision_config", "audio_config"):  # the demo's file has more keys; the geometry agrees
        assert {k: resolved.config[tower][k] for k in release.config[tower]} == release.config[tower], tower
    for key in ("hidden_size", "num_hidden_layers", "num_key_value_heads", "vocab_size", "rope_theta"):
        assert resolved.config["text_config"][key] == release.config["text_config"][key], key
    # The demo's CMVN comes from its feature extractor's float32 JSON: the same statistics as the file.
    np.testing.assert_array_equal(np.float32(resolved.config["cmvn_means"]), np.float32(release.config["cmvn_means"]))
    np.testing.assert_array_equal(np.float32(resolved.config["cmvn_istds"]), np.float32(release.config["cmvn_istds"]))


def test_parity_folder_is_the_demo_layout(parity_dir: Path) -> None:
    resolved = resolve_checkpoint(parity_dir / "llm_mm")
    assert resolved.layout == "demo" and not resolved.has_tokenizer
    assert (resolved.config["image_token_index"], resolved.config["audio_token_index"]) == (2000, 2001)
    from safetensors import safe_open

    with safe_open(str(parity_dir / "llm_mm" / "model.safetensors"), "pt") as f:
        mean = f.get_tensor("model.audio_encoder.encoder.global_cmvn.mean").numpy()
    np.testing.assert_array_equal(np.float32(resolved.config["cmvn_means"]), mean)


@pytest.fixture
def copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, target)
    return target


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_clear_errors_name_the_missing_file_or_key(copy: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(tmp_path / "nowhere")
    shard = copy / "model-00002-of-00004.safetensors"
    shard.rename(tmp_path / "moved")
    with pytest.raises(CheckpointError, match="model-00002-of-00004.safetensors"):
        resolve_checkpoint(copy)
    (tmp_path / "moved").rename(shard)
    _edit_json(copy / "config.json", hidden_size=None)
    with pytest.raises(CheckpointError, match="'hidden_size'"):
        resolve_checkpoint(copy)
    _edit_json(copy / "config.json", model_type="llama", architectures=["LlamaForCausalLM"])
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        resolve_checkpoint(copy)
    (copy / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        resolve_checkpoint(copy)


def test_demo_config_missing_key_and_missing_weights(parity_dir: Path, tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    shutil.copytree(parity_dir / "llm_mm", demo, ignore=shutil.ignore_patterns("golden"))
    _edit_json(demo / "config.json", audio_token_index=None)
    with pytest.raises(CheckpointError, match="'audio_token_index'"):
        resolve_checkpoint(demo)
    (demo / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights"):
        resolve_checkpoint(demo)


def test_placeholder_outside_vocabulary_is_rejected(copy: Path) -> None:
    _edit_json(copy / "config.json", vocab_size=50_000)  # a model whose vocabulary cannot hold 51000
    with pytest.raises(CheckpointError, match="51000 is outside the vocabulary"):
        resolve_checkpoint(copy)


def test_every_key_is_consumed_and_no_parameter_is_missing(tiny_checkpoint: Path) -> None:
    resolved = resolve_checkpoint(tiny_checkpoint)
    model, report = load_torch_model(tiny_checkpoint, resolved.config)
    index = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())["weight_map"]
    assert report.consumed == {module_name(k) for k in index if not is_skipped(k)}
    assert report.consumed == set(model.state_dict()) and not report.missing
    assert report.skipped == {k for k in index if "global_cmvn" in k}


def test_full_size_parameters_on_the_meta_device() -> None:
    """The 7B geometry (architecture.md §1.3–1.10) without allocating it: names, shapes and totals."""
    text = {k: v for k, v in shipped.TEXT_KEYS_OPTIONAL.items()} | {
        "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28, "num_hidden_layers": 28,
        "num_key_value_heads": 4, "vocab_size": 152064}
    cfg = dict(shipped.TOP_LEVEL, text_config=text, vision_config=shipped.VISION_CONFIG,
               audio_config=shipped.AUDIO_CONFIG)
    with torch.device("meta"):
        model = VitaTorchModel(cfg)
    params = {n: tuple(p.shape) for n, p in model.named_parameters()}
    real = TinySizes(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vocab=152064,
                     vit_hidden=1024, vit_layers=24, vit_intermediate=4096, audio_hidden=1024, audio_heads=16,
                     audio_layers=24, audio_intermediate=4096)
    expected = {module_name(k): s for k, s in release_shapes(real).items() if not is_skipped(k)}
    assert params == expected

    def total(prefix: str) -> int:
        return sum(int(np.prod(s)) for n, s in params.items() if n.startswith(prefix))

    assert total("language_model.") == 7_615_616_512
    assert total("vision.vision_tower.") == 304_012_288
    assert total("vision.vision_projector.") == 27_532_288
    assert total("audio.") == 375_786_144 - 160  # the spec's count includes the 160 CMVN buffer values
    assert total("audio.encoder.") == 357_950_464
