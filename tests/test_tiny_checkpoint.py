"""The tiny checkpoint generator: release layout, tokenizer, determinism, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

from engine.tiny_checkpoint import (
    AUDIO_ENCODER_DIR,
    DEMO_MODULES,
    PACED_7B,
    QWEN_SPECIAL_TOKENS,
    STATE_TOKENS,
    TinySizes,
    release_shapes,
    write_tiny_checkpoint,
)

SHARDS = tuple(f"model-0000{k}-of-00004.safetensors" for k in range(1, 5))
RELEASE_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer_config.json",
                 "tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json",
                 *SHARDS, f"{AUDIO_ENCODER_DIR}/global_cmvn", f"{AUDIO_ENCODER_DIR}/train.yaml",
                 f"{AUDIO_ENCODER_DIR}/final.pt", "vita_tts_ckpt/decoder/model.json",
                 "vita_tts_ckpt/decoder/final.pt", "vita_tts_ckpt/codec/model.json", "vita_tts_ckpt/codec/final.pt")
DEMO_EXTRA_FILES = ("origin_config.json", "preprocessor_config.json", "feature_extractor/preprocessor_config.json",
                    *DEMO_MODULES)


def test_release_layout_files_and_keys(tiny_checkpoint: Path) -> None:
    for name in RELEASE_FILES:
        assert (tiny_checkpoint / name).is_file(), name
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "vita-Qwen2" and config["architectures"] == ["VITAQwen2ForCausalLM"]
    assert config["torch_dtype"] == "bfloat16"
    assert config["hidden_size"] // config["num_attention_heads"] in (32, 64)  # vLLM CPU attention head sizes
    weight_map = json.loads((tiny_checkpoint / "model.safetensors.index.json").read_text())["weight_map"]
    shapes = {}
    for shard in sorted(set(weight_map.values())):
        with safe_open(str(tiny_checkpoint / shard), "pt") as f:
            shapes |= {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            assert all(weight_map[k] == shard for k in f.keys())  # noqa: SIM118
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118
    assert shapes == release_shapes(TinySizes())
    assert sorted(set(weight_map.values())) == list(SHARDS)
    assert not any((tiny_checkpoint / name).exists() for name in DEMO_EXTRA_FILES)


def test_demo_layout_is_the_release_plus_the_demos_files(tmp_path: Path) -> None:
    demo = write_tiny_checkpoint(tmp_path / "demo", seed=0, layout="demo")
    for name in (*RELEASE_FILES, *DEMO_EXTRA_FILES):
        assert (demo / name).is_file(), name
    config = json.loads((demo / "config.json").read_text())
    assert {"text_config", "vision_config", "audio_config"} <= set(config)
    assert (config["image_token_index"], config["audio_token_index"]) == (51000, 51001)
    assert json.loads((demo / "origin_config.json").read_text())["model_type"] == "vita-Qwen2"
    extractor = json.loads((demo / "feature_extractor" / "preprocessor_config.json").read_text())
    assert len(extractor["cmvn_means"]) == len(extractor["cmvn_istds"]) == 80


def test_tokenizer_is_qwen25_shaped(tiny_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_checkpoint))
    sizes = TinySizes()
    assert type(tok).__name__ == "Qwen2Tokenizer" and len(tok) == sizes.bpe_vocab + len(QWEN_SPECIAL_TOKENS)
    # Qwen's specials are the added tokens right after the BPE range, in Qwen's order.
    assert [tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS] == list(
        range(sizes.bpe_vocab, sizes.bpe_vocab + len(QWEN_SPECIAL_TOKENS)))
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    # As in the real vocabulary: the state tokens are BPE entries found by encoding only, and the
    # placeholders 51000/51001 are ordinary BPE ids, not "<image>"/"<audio>" tokens.
    for state in STATE_TOKENS:
        assert tok.convert_tokens_to_ids(state) is None
        (only,) = tok.encode(state, add_special_tokens=False)
        assert only < sizes.bpe_vocab
    for tag in ("<image>", "<audio>"):
        assert len(tok.encode(tag, add_special_tokens=False)) > 1
    assert not tok.convert_ids_to_tokens(51000).startswith("<")
    text = "<|im_start|>user\nHello 你好<|im_end|>\n<|im_start|>assistant\n☞ Fine."
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_same_seed_same_bytes_other_seed_other_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    again = write_tiny_checkpoint(tmp_path / "again", seed=0)
    for name in RELEASE_FILES:
        assert (again / name).read_bytes() == (tiny_checkpoint / name).read_bytes(), name
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)
    shard = SHARDS[1]
    assert (other / shard).read_bytes() != (tiny_checkpoint / shard).read_bytes()


def test_cli_writes_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "engine.tiny_checkpoint", str(out), "--seed", "3"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (out / "model.safetensors.index.json").is_file()


def test_paced_sizes_keep_the_formats_at_a_realistic_cost(tmp_path: Path) -> None:
    # The benchmark geometry: same files and keys, wider, grouped-query attention, the speech head at width/4.
    out = tmp_path / "paced"
    done = subprocess.run([sys.executable, "-m", "engine.tiny_checkpoint", str(out), "--sizes", "7b-paced"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (PACED_7B.hidden, PACED_7B.layers)
    assert PACED_7B.hidden > TinySizes().hidden
    assert config["num_attention_heads"] > config["num_key_value_heads"] > 0
    assert config["hidden_size"] // config["num_attention_heads"] == 64  # vLLM's CPU attention head size
    idim, _, _ = json.loads((out / "vita_tts_ckpt" / "decoder" / "model.json").read_text())
    assert idim == PACED_7B.hidden // 4
    tiny = tmp_path / "tiny"
    write_tiny_checkpoint(tiny, seed=0)
    assert sorted(p.name for p in out.rglob("*")) == sorted(p.name for p in tiny.rglob("*"))
