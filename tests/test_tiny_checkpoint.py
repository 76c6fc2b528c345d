"""The tiny checkpoint generator: release layout, tokenizer, determinism, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from engine.tiny_checkpoint import (
    AUDIO_ENCODER_DIR,
    PLACEHOLDER_TOKENS,
    QWEN_SPECIAL_TOKENS,
    STATE_TOKENS,
    TinySizes,
    release_shapes,
    write_tiny_checkpoint,
)

RELEASE_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer_config.json",
                 "tokenizer.json", "vocab.json", "merges.txt", "model-00001-of-00002.safetensors",
                 "model-00002-of-00002.safetensors", f"{AUDIO_ENCODER_DIR}/global_cmvn")


def test_release_layout_files_and_keys(tiny_checkpoint: Path) -> None:
    for name in RELEASE_FILES:
        assert (tiny_checkpoint / name).is_file(), name
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "vita-Qwen2" and config["architectures"] == ["VITAQwen2ForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] in (32, 64)  # vLLM CPU attention head sizes
    weight_map = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())["weight_map"]
    shapes = {}
    for shard in sorted(set(weight_map.values())):
        with safe_open(str(tiny_checkpoint / shard), "pt") as f:
            shapes |= {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            assert all(weight_map[k] == shard for k in f.keys())  # noqa: SIM118
    assert shapes == release_shapes(TinySizes())
    assert (tiny_checkpoint / "vita_tts_ckpt" / "decoder").is_dir()
    assert (tiny_checkpoint / "vita_tts_ckpt" / "codec").is_dir()


def test_tokenizer_has_qwen_specials_placeholders_and_state_tokens(tiny_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    assert type(tok).__name__ == "Qwen2Tokenizer"
    ids = [tok.convert_tokens_to_ids(t) for t in (*QWEN_SPECIAL_TOKENS, *PLACEHOLDER_TOKENS, *STATE_TOKENS)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and max(ids) < TinySizes().vocab
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = "<|im_start|>user\n<image><audio>Hello 你好<|im_end|>\n<|im_start|>assistant\n☞ Fine."
    encoded = tok.encode(text, add_special_tokens=False)
    assert tok.decode(encoded) == text
    for single in ("<image>", "<audio>", "☞", "☟", "☜", "<|im_end|>"):
        assert len(tok.encode(single, add_special_tokens=False)) == 1


def test_same_seed_same_bytes_other_seed_other_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    again = write_tiny_checkpoint(tmp_path / "again", seed=0)
    for name in RELEASE_FILES:
        assert (again / name).read_bytes() == (tiny_checkpoint / name).read_bytes(), name
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)
    shard = "model-00002-of-00002.safetensors"
    assert (other / shard).read_bytes() != (tiny_checkpoint / shard).read_bytes()


def test_cli_writes_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "engine.tiny_checkpoint", str(out), "--seed", "3"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (out / "model.safetensors.index.json").is_file()
