"""Loading ``vita_tts_ckpt`` files: key accounting, weight-norm folding, the tiny generator, bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from engine.speech import SpeechCheckpointError, SpeechHead, SpeechInputError, write_tts_checkpoint
from engine.speech.checkpoint import fold_weight_norm
from engine.speech.codec import Codec
from engine.speech.conditioning import EmbeddingTable
from engine.speech.decoder import SpeechDecoder


def test_every_key_consumed_and_none_missing(tts_dir: Path) -> None:
    decoder, dec_report = SpeechDecoder.from_files(tts_dir / "decoder")
    file_keys = set(torch.load(tts_dir / "decoder" / "final.pt", weights_only=True)["model"])
    assert set(dec_report.consumed) | set(dec_report.skipped) == file_keys
    assert set(dec_report.consumed) == set(decoder.state_dict())
    assert dec_report.unexpected == ()
    assert all(k.startswith("layers_prefix.") for k in dec_report.skipped)

    codec, codec_report = Codec.from_files(tts_dir / "codec")
    raw = torch.load(tts_dir / "codec" / "final.pt", weights_only=True)
    assert set(raw) == {"generator", "quantizer"}
    want = {f"generator.{k}" for k in raw["generator"]} | {f"quantizer.{k}" for k in raw["quantizer"]}
    assert set(codec_report.consumed) == want and codec_report.unexpected == ()
    # Old-style weight norm throughout: no plain conv weight is stored, every one is folded.
    assert not any(k.endswith(".weight") for k in raw["generator"])
    assert len(codec.generator.state_dict()) == len(raw["generator"]) * 2 // 3


def test_tiny_generator_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    write_tts_checkpoint(tmp_path / "a", seed=3, llm_hidden_size=32)
    write_tts_checkpoint(tmp_path / "b", seed=3, llm_hidden_size=32)
    write_tts_checkpoint(tmp_path / "c", seed=4, llm_hidden_size=32)
    for part in ("decoder", "codec"):
        assert (tmp_path / "a" / part / "model.json").read_text() == (tmp_path / "b" / part / "model.json").read_text()
    a = torch.load(tmp_path / "a" / "decoder" / "final.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "decoder" / "final.pt", weights_only=True)["model"]
    c = torch.load(tmp_path / "c" / "decoder" / "final.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["embedding.weight"], c["embedding.weight"])
    assert a["embedding.weight"].shape == (1028, 8)  # idim = 32 / 4
    ga = torch.load(tmp_path / "a" / "codec" / "final.pt", weights_only=True)["generator"]
    gb = torch.load(tmp_path / "b" / "codec" / "final.pt", weights_only=True)["generator"]
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
    with pytest.raises(ValueError):
        write_tts_checkpoint(tmp_path / "d", llm_hidden_size=30)


def test_weight_norm_fold_equals_unfolded_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 12, 40, generator=gen)
    conv = torch.nn.Conv1d(12, 6, 5, padding=2)
    up = torch.nn.ConvTranspose1d(12, 6, 11, 5, padding=3)  # the released ups.1 geometry
    for module in (conv, up):
        v = torch.randn(module.weight.shape, generator=gen)
        g = torch.rand((v.shape[0], 1, 1), generator=gen) + 0.5  # ≠ ‖v‖ on purpose
        wn = torch.nn.utils.parametrizations.weight_norm(module, dim=0)
        with torch.no_grad():
            wn.parametrizations.weight.original0.copy_(g)
            wn.parametrizations.weight.original1.copy_(v)
            reference = wn(x)
            folded = fold_weight_norm(g, v)
            plain = (
                F.conv1d(x, folded, module.bias, padding=2)
                if isinstance(module, torch.nn.Conv1d)
                else F.conv_transpose1d(x, folded, module.bias, stride=5, padding=3)
            )
        torch.testing.assert_close(plain, reference, atol=1e-5, rtol=1e-5)
        assert g.shape[0] == module.weight.shape[0]  # dim 0: out-channels for Conv1d, in-channels for ConvTranspose1d
    assert plain.shape[-1] == 5 * 40


def test_global_vector_added_at_the_128_channel_stage(tts_dir: Path) -> None:
    codec, _ = Codec.from_files(tts_dir / "codec")
    assert codec.generator.global_stages == [True, False, False, False]
    assert codec.samples_per_code == 600
    assert codec.decode([1, 2, 3, 4, 5, 6, 7]).shape == (4200,)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    ("target", "content", "match"),
    [
        ("decoder/model.json", None, "missing"),
        ("decoder/model.json", "{not json", "not valid JSON"),
        ("decoder/model.json", '{"idim": 16}', r"list \[idim, odim, args\]"),
        ("decoder/final.pt", None, "missing"),
        ("decoder/final.pt", "garbage bytes", "not a readable torch checkpoint"),
        ("codec/model.json", '{"resblock": "2"}', "resblock"),
        ("codec/final.pt", None, "missing"),
    ],
)
def test_missing_or_malformed_files_raise_typed_errors(
    tts_dir: Path, llm_dir: Path, tmp_path: Path, target: str, content: str | None, match: str
) -> None:
    folder = _copy(tts_dir, tmp_path / "ckpt")
    if content is None:
        (folder / target).unlink()
    else:
        (folder / target).write_text(content)
    with pytest.raises(SpeechCheckpointError, match=match):
        SpeechHead.from_checkpoint(folder, llm_dir, device="cpu")


def test_missing_tensor_wrong_shape_and_nan_are_rejected(tts_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tts_dir, tmp_path / "ckpt")
    path = folder / "decoder" / "final.pt"
    state = torch.load(path, weights_only=True)["model"]
    broken = dict(state)
    del broken["norm.weight"]
    torch.save({"model": broken}, path)
    with pytest.raises(SpeechCheckpointError, match="missing"):
        SpeechDecoder.from_files(folder / "decoder")
    torch.save({**state, "norm.weight": torch.ones(3)}, path)  # also: a bare state dict is accepted
    with pytest.raises(SpeechCheckpointError, match="shape"):
        SpeechDecoder.from_files(folder / "decoder")
    torch.save({**state, "norm.weight": torch.full_like(state["norm.weight"], float("nan"))}, path)
    with pytest.raises(SpeechCheckpointError, match="NaN"):
        SpeechDecoder.from_files(folder / "decoder")
    codec_path = folder / "codec" / "final.pt"
    raw = torch.load(codec_path, weights_only=True)
    torch.save({"generator": raw["generator"]}, codec_path)
    with pytest.raises(SpeechCheckpointError, match="quantizer"):
        Codec.from_files(folder / "codec")
    del raw["generator"]["conv_pre.weight_g"]
    torch.save(raw, codec_path)
    with pytest.raises(SpeechCheckpointError, match="partner"):
        Codec.from_files(folder / "codec")


def test_decoder_json_constraints(tts_dir: Path, tmp_path: Path) -> None:
    folder = _copy(tts_dir, tmp_path / "ckpt")
    idim, odim, args = json.loads((folder / "decoder" / "model.json").read_text())
    args["transformer_attention_dim"] = 2 * args["idim"]
    (folder / "decoder" / "model.json").write_text(json.dumps([idim, odim, args]))
    with pytest.raises(SpeechCheckpointError, match="must equal idim"):
        SpeechDecoder.from_files(folder / "decoder")


def test_embedding_table_via_index_and_width_checks(tts_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "llm"
    folder.mkdir()
    table = torch.randn(100, 64).bfloat16()
    save_file({"model.embed_tokens.weight": table}, folder / "model-00002-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.embed_tokens.weight": "model-00002-of-00002.safetensors"}})
    )
    reader = EmbeddingTable.from_checkpoint(folder)
    rows = reader.conditioning([7, 3])
    assert rows.dtype == torch.float32 and rows.shape == (8, 16)
    torch.testing.assert_close(rows[4:8].reshape(-1), table[3].float(), atol=0, rtol=0)  # token-major slices
    with pytest.raises(SpeechInputError, match="outside"):
        reader.conditioning([100])
    with pytest.raises(SpeechInputError, match="no token ids"):
        reader.conditioning([])
    save_file({"model.embed_tokens.weight": torch.randn(10, 48)}, folder / "model-00002-of-00002.safetensors")
    with pytest.raises(SpeechCheckpointError, match="not 4 × decoder idim"):
        SpeechHead.from_checkpoint(tts_dir, folder, device="cpu")
    (folder / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(SpeechCheckpointError, match="does not map"):
        EmbeddingTable.from_checkpoint(folder)
    with pytest.raises(SpeechCheckpointError, match="no model.safetensors"):
        EmbeddingTable.from_checkpoint(tmp_path / "nowhere")
