"""Plain-torch parity of every ``llm_mm`` golden: tiling, pixels, towers, fbank/CMVN, merge, LLM."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vllm_patches.audio_features import Cmvn, apply_cmvn, kaldi_fbank, num_audio_tokens, num_fbank_frames
from vllm_patches.image_preprocess import image_to_pixel_values, plan_tiles, tile_image
from vllm_patches.torch_model import load_torch_model
from vllm_patches.vision_tower import pixel_shuffle

pytestmark = pytest.mark.parity


def assert_close(actual: torch.Tensor | np.ndarray, golden: np.ndarray) -> None:
    """The README's tolerance: max |error| ≤ 1e-5 · max(1, max |golden|)."""
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else actual
    assert actual.shape == golden.shape
    err = float(np.max(np.abs(actual - golden)))
    assert err <= 1e-5 * max(1.0, float(np.max(np.abs(golden)))), err


@pytest.fixture(scope="module")
def mm(parity_dir: Path) -> Path:
    return parity_dir / "llm_mm"


@pytest.fixture(scope="module")
def golden(mm: Path):
    return lambda name: np.load(mm / "golden" / name)


@pytest.fixture(scope="module")
def cfg(mm: Path) -> dict:
    return json.loads((mm / "config.json").read_text())


@pytest.fixture(scope="module")
def model(mm: Path, cfg: dict):
    loaded, report = load_torch_model(mm, cfg)
    assert report.skipped == {"model.audio_encoder.encoder.global_cmvn.mean",
                              "model.audio_encoder.encoder.global_cmvn.istd"}
    return loaded


@pytest.fixture(scope="module")
def waveform(parity_dir: Path) -> np.ndarray:
    with wave.open(str(parity_dir.parent / "speech" / "question_en.wav")) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


@pytest.fixture(scope="module")
def image(mm: Path) -> Image.Image:
    return Image.open(mm / "golden" / "image.png").convert("RGB")


def test_tiling_cases_match_reference(mm: Path) -> None:
    cases = json.loads((mm / "golden" / "tiling_cases.json").read_text())["cases"]
    assert len(cases) == 160
    for case in cases:
        plan = plan_tiles(case["width"], case["height"], min_num=case["min_dynamic_patch"],
                          max_num=case["max_dynamic_patch"])
        assert (plan.cols, plan.rows, plan.num_tiles, plan.num_tokens) == (
            case["grid_cols"], case["grid_rows"], case["tiles_incl_thumbnail"], case["image_tokens"]), case


@pytest.mark.parametrize(("mdp", "tiles"), [(1, 1), (6, 3)])
def test_tiles_and_pixel_values_exact(mm: Path, image: Image.Image, mdp: int, tiles: int) -> None:
    plan = plan_tiles(*image.size, max_num=mdp)
    cut = tile_image(image, plan)
    assert len(cut) == tiles
    for k, tile in enumerate(cut):
        ref = np.asarray(Image.open(mm / "golden" / "image_tiles" / f"mdp{mdp}_tile{k}.png").convert("RGB"))
        np.testing.assert_array_equal(np.asarray(tile), ref)
    pixels = image_to_pixel_values(image, max_num=mdp)
    np.testing.assert_array_equal(pixels, np.load(mm / "golden" / f"pixel_values_mdp{mdp}.npz")["pixel_values"])


@pytest.mark.parametrize("mdp", [1, 6])
def test_vision_path_matches_goldens(model, mm: Path, golden, mdp: int) -> None:
    pixels = torch.from_numpy(np.load(mm / "golden" / f"pixel_values_mdp{mdp}.npz")["pixel_values"])
    with torch.no_grad():
        assert_close(model.vision.vit_features(pixels), golden(f"vit_features_mdp{mdp}.npy"))
        shuffled = pixel_shuffle(torch.from_numpy(golden(f"vit_features_mdp{mdp}.npy")), model.vision.geo)
        assert_close(shuffled, golden(f"vit_shuffled_mdp{mdp}.npy"))
        projected = model.vision.vision_projector(torch.from_numpy(golden(f"vit_shuffled_mdp{mdp}.npy")))
        assert_close(projected, golden(f"vision_embeddings_mdp{mdp}.npy"))
        assert_close(model.vision(pixels), golden(f"vision_embeddings_mdp{mdp}.npy"))


def test_fbank_and_cmvn_match_reference(mm: Path, golden, waveform: np.ndarray) -> None:
    fbank = kaldi_fbank(waveform)
    assert fbank.shape[0] == num_fbank_frames(waveform.size) == 464
    assert float(np.max(np.abs(fbank - golden("audio_fbank.npy")))) <= 1e-3
    extractor = json.loads((mm / "feature_extractor" / "preprocessor_config.json").read_text())
    cmvn = Cmvn.from_lists(extractor["cmvn_means"], extractor["cmvn_istds"])
    assert_close(apply_cmvn(golden("audio_fbank.npy"), cmvn), golden("audio_features.npy"))
    assert num_audio_tokens(waveform.size) == 58


def test_whale_encoder_and_adapter_single_clip(model, golden) -> None:
    feats = torch.from_numpy(golden("audio_features.npy"))[None]
    mask = torch.ones(feats.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        enc, enc_mask = model.audio.encoder(feats, mask)
        assert_close(enc, golden("whale_encoder_out.npy"))
        np.testing.assert_array_equal(enc_mask.numpy(), golden("whale_encoder_mask.npy").astype(bool))
        emb, emb_mask = model.audio.adapter(torch.from_numpy(golden("whale_encoder_out.npy")), enc_mask)
        assert_close(emb, golden("audio_embeddings.npy"))
        np.testing.assert_array_equal(emb_mask.numpy(), golden("audio_embeddings_mask.npy").astype(bool))


def test_padded_batch_of_two_clips(model, golden) -> None:
    feats = torch.from_numpy(golden("audio_batch2_input.npy"))
    mask = torch.from_numpy(golden("audio_batch2_input_mask.npy")).bool()
    with torch.no_grad():
        enc, enc_mask = model.audio.encoder(feats, mask)
        np.testing.assert_array_equal(enc_mask.numpy(), golden("audio_batch2_whale_encoder_mask.npy").astype(bool))
        valid = enc_mask.numpy()
        assert_close(enc.numpy()[valid], golden("audio_batch2_whale_encoder_out.npy")[valid])
        emb, emb_mask = model.audio(feats, mask)
        rows = golden("audio_batch2_embeddings_mask.npy").astype(bool)
        np.testing.assert_array_equal(emb_mask.numpy(), rows)
        assert rows.sum(axis=1).tolist() == [58, 24]
        assert_close(emb.numpy()[rows], golden("audio_batch2_embeddings.npy")[rows])
        clips = [feats[0], feats[1, : int(mask[1].sum())]]
        per_clip = model.audio.embed_clips(clips)
        assert [c.shape[0] for c in per_clip] == [58, 24]
        assert_close(per_clip[1], golden("audio_batch2_embeddings.npy")[1][rows[1]])


def test_merged_embeddings_hidden_and_logits(model, golden, mm: Path) -> None:
    ids = torch.from_numpy(golden("llm_input_ids.npy"))
    np.testing.assert_array_equal(ids.numpy(), golden("prompt_ids_expanded_mdp1.npy"))
    pixels = torch.from_numpy(np.load(mm / "golden" / "pixel_values_mdp1.npz")["pixel_values"])
    clip = torch.from_numpy(golden("audio_features.npy"))
    with torch.no_grad():
        assert_close(model.merge_embeddings(ids, pixels, [clip]), golden("llm_inputs_embeds.npy"))
        hidden = model.final_hidden(torch.from_numpy(golden("llm_inputs_embeds.npy")))
        assert_close(hidden, golden("llm_final_hidden.npy"))
        logits = model.logits(torch.from_numpy(golden("llm_final_hidden.npy"))[-16:])
        assert_close(logits, golden("llm_logits_last16.npy"))
        assert int(logits[-1].argmax()) == 1890


def test_placeholder_count_mismatch_is_a_clear_error(model, golden) -> None:
    ids = torch.from_numpy(golden("llm_input_ids.npy"))[:-40]  # audio span cut short
    pixels = torch.zeros(1, 3, 448, 448)
    with pytest.raises(ValueError, match="placeholder"):
        model.merge_embeddings(ids, pixels, [torch.from_numpy(golden("audio_features.npy"))])
