"""Write a tiny, randomly initialised VITA-1.5 checkpoint in exactly the release layout.

    python -m engine.tiny_checkpoint OUT_DIR --seed 0

Same file names, config keys and parameter names as the HF release (``model-0000k-of-0000n.safetensors``
+ index, the release's ``VITAQwen2`` ``config.json``, Qwen2 tokenizer files, the audio-encoder folder's
``global_cmvn``, ``vita_tts_ckpt/``), at sizes vLLM's CPU attention supports (head size 64). The
tokenizer is byte-level BPE with the Qwen special tokens, ``<image>``/``<audio>`` placeholders and the
state tokens ☞ ☟ ☜. Deterministic for a seed; nothing is downloaded. Tests and the CPU demo use it.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

log = logging.getLogger(__name__)

AUDIO_ENCODER_DIR = "audio-encoder-Qwen2-7B-1107-weight-base-11wh-tunning"
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
PLACEHOLDER_TOKENS = ("<image>", "<audio>")
STATE_TOKENS = ("☞", "☟", "☜")
_CORPUS = (
    "You are an AI robot and your name is VITA. Hello, how are you today? I am fine, thank you. "
    "What do you see in the picture? The quick brown fox jumps over the lazy dog. 你好，今天天气很好。 "
    "Please describe the image. Answer the question in the audio. system user assistant 0123456789 "
)


@dataclass(frozen=True, slots=True)
class TinySizes:
    """Tiny geometry: every structural feature of the real model, at toy widths."""

    hidden: int = 128
    layers: int = 2
    heads: int = 2  # head size 64: supported by vLLM's CPU attention
    kv_heads: int = 1  # GQA 2:1 as in the real model (28:4)
    intermediate: int = 256
    vocab: int = 512
    bpe_vocab: int = 420
    vit_hidden: int = 64  # one head of 64, the InternViT head size
    vit_layers: int = 2
    vit_intermediate: int = 128
    audio_hidden: int = 64
    audio_heads: int = 4
    audio_layers: int = 2
    audio_intermediate: int = 128


def _tokenizer(out: Path, sizes: TinySizes) -> dict[str, int]:
    """Train a byte-level BPE (Qwen's pre-tokenizer) and save it as a ``Qwen2Tokenizer``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AddedToken
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=sizes.bpe_vocab, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([_CORPUS] * 20, trainer)
    state = json.loads(bpe.to_str())["model"]
    vocab = dict(state["vocab"])
    for token in (*QWEN_SPECIAL_TOKENS, *PLACEHOLDER_TOKENS, *STATE_TOKENS):  # Qwen order: specials after BPE
        vocab[token] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         unk_token=None)
    tok.add_tokens([AddedToken(t, special=t not in ("<tool_call>", "</tool_call>"), normalized=False)
                    for t in QWEN_SPECIAL_TOKENS], special_tokens=False)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in PLACEHOLDER_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in STATE_TOKENS])
    # The release ships vocab.json + merges.txt (what transformers 5 rebuilds Qwen2Tokenizer from).
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok.model_max_length = 32768
    tok.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    added = json.loads((out / "tokenizer.json").read_text())["added_tokens"]
    cfg.update(tokenizer_class="Qwen2Tokenizer", add_bos_token=False, bos_token=None, errors="replace",
               clean_up_tokenization_spaces=False, split_special_tokens=False,
               added_tokens_decoder={str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added})
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    ids = {t: tok.convert_tokens_to_ids(t) for t in (*QWEN_SPECIAL_TOKENS, *PLACEHOLDER_TOKENS, *STATE_TOKENS)}
    if len(tok) > sizes.vocab:
        raise ValueError(f"tokenizer has {len(tok)} entries, more than the model vocabulary {sizes.vocab}")
    return ids


class _Init:
    """The fixtures' initialisation rules, from one seeded generator (tensors drawn in key order)."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def normal(self, shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen) * std + mean

    def tensor(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        leaf = key.rsplit(".", 1)[-1]
        is_norm = any(n in key for n in ("norm", "bn2", "embed.1", "layernorm"))
        if leaf == "bias":
            return self.normal(shape, 0.05)
        if is_norm:
            return self.normal(shape, 0.1, 1.0)
        if leaf in ("ls1", "ls2"):
            return torch.rand(shape, generator=self.gen) + 0.5
        if leaf.startswith("pos_bias"):
            return self.normal(shape, 0.2)
        if "embed_tokens" in key or leaf in ("class_embedding", "position_embedding"):
            return self.normal(shape, 0.5)
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return self.normal(shape, fan_in**-0.5)


def release_shapes(s: TinySizes) -> dict[str, tuple[int, ...]]:
    """Every released key (architecture.md §1.2–1.10) with its shape at sizes ``s``."""
    h, hd = s.hidden, s.hidden // s.heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (s.vocab, h), "model.norm.weight": (h,),
                                          "lm_head.weight": (s.vocab, h)}
    for i in range(s.layers):
        p = f"model.layers.{i}."
        shapes |= {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
                   p + "self_attn.k_proj.weight": (s.kv_heads * hd, h), p + "self_attn.k_proj.bias": (s.kv_heads * hd,),
                   p + "self_attn.v_proj.weight": (s.kv_heads * hd, h), p + "self_attn.v_proj.bias": (s.kv_heads * hd,),
                   p + "self_attn.o_proj.weight": (h, h), p + "mlp.gate_proj.weight": (s.intermediate, h),
                   p + "mlp.up_proj.weight": (s.intermediate, h), p + "mlp.down_proj.weight": (h, s.intermediate),
                   p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}
    v, vp = s.vit_hidden, "model.vision_tower.vision_tower."
    shapes |= {vp + "embeddings.class_embedding": (1, 1, v), vp + "embeddings.patch_embedding.weight": (v, 3, 14, 14),
               vp + "embeddings.patch_embedding.bias": (v,), vp + "embeddings.position_embedding": (1, 1025, v)}
    for i in range(s.vit_layers):
        p = f"{vp}encoder.layers.{i}."
        shapes |= {p + "norm1.weight": (v,), p + "norm1.bias": (v,), p + "norm2.weight": (v,), p + "norm2.bias": (v,),
                   p + "attn.qkv.weight": (3 * v, v), p + "attn.qkv.bias": (3 * v,), p + "attn.proj.weight": (v, v),
                   p + "attn.proj.bias": (v,), p + "ls1": (v,), p + "ls2": (v,),
                   p + "mlp.fc1.weight": (s.vit_intermediate, v), p + "mlp.fc1.bias": (s.vit_intermediate,),
                   p + "mlp.fc2.weight": (v, s.vit_intermediate), p + "mlp.fc2.bias": (v,)}
    shapes |= {"model.mm_projector.0.weight": (h, 4 * v), "model.mm_projector.0.bias": (h,),
               "model.mm_projector.2.weight": (h, h), "model.mm_projector.2.bias": (h,)}
    a, ap = s.audio_hidden, "model.audio_encoder.encoder."
    shapes |= {ap + "enc.0.core.conv.0.weight": (a, 1, 3, 3), ap + "enc.0.core.conv.0.bias": (a,),
               ap + "enc.0.core.conv.2.weight": (a, a, 3, 3), ap + "enc.0.core.conv.2.bias": (a,),
               ap + "enc.0.core.out.0.weight": (a, a * 19), ap + "enc.0.core.out.0.bias": (a,),
               ap + "enc.1.embed.0.weight": (a, a), ap + "enc.1.embed.0.bias": (a,),
               ap + "enc.1.embed.1.weight": (a,), ap + "enc.1.embed.1.bias": (a,),
               ap + "enc.1.after_norm.weight": (a,), ap + "enc.1.after_norm.bias": (a,),
               ap + "global_cmvn.mean": (80,), ap + "global_cmvn.istd": (80,)}
    for i in range(s.audio_layers):
        p = f"{ap}enc.1.encoders.{i}."
        for lin in ("linear_q", "linear_k", "linear_v", "linear_out"):
            shapes |= {p + f"self_attn.{lin}.weight": (a, a), p + f"self_attn.{lin}.bias": (a,)}
        shapes |= {p + "self_attn.linear_pos.weight": (a, a), p + "self_attn.pos_bias_u": (s.audio_heads, a // s.audio_heads),
                   p + "self_attn.pos_bias_v": (s.audio_heads, a // s.audio_heads),
                   p + "feed_forward.w_1.weight": (s.audio_intermediate, a), p + "feed_forward.w_1.bias": (s.audio_intermediate,),
                   p + "feed_forward.w_2.weight": (a, s.audio_intermediate), p + "feed_forward.w_2.bias": (a,),
                   p + "norm1.weight": (a,), p + "norm1.bias": (a,), p + "norm2.weight": (a,), p + "norm2.bias": (a,)}
    shapes |= {"model.audio_encoder.adpter.conv1d2.weight": (2 * a, a, 5), "model.audio_encoder.adpter.conv1d2.bias": (2 * a,),
               "model.audio_encoder.adpter.bn2.weight": (2 * a,), "model.audio_encoder.adpter.bn2.bias": (2 * a,),
               "model.audio_encoder.adpter.project.weight": (h, 2 * a), "model.audio_encoder.adpter.project.bias": (h,)}
    return shapes


def _cmvn_stats(seed: int, frames: int = 100_000) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Made-up but realistic CMVN (means 12…17, inverse stds 0.27…0.33) and its WeNet ``global_cmvn`` file."""
    rng = np.random.default_rng(seed)
    curve = np.sin(np.linspace(0, np.pi, 80))
    means = (12.4 + 4.5 * curve + rng.normal(0, 0.1, 80)).astype(np.float64)
    istds = (0.27 + 0.06 * (1 - curve) + rng.uniform(0, 0.003, 80)).astype(np.float64)
    var = 1.0 / istds**2
    stats = {"mean_stat": (means * frames).tolist(), "var_stat": ((var + means**2) * frames).tolist(),
             "frame_num": frames}
    return means.astype(np.float32), istds.astype(np.float32), stats


def _release_config(s: TinySizes, ids: dict[str, int]) -> dict[str, object]:
    """The release's own HF config (``VITAQwen2``): Qwen2 keys + the multimodal training keys."""
    return {
        "architectures": ["VITAQwen2ForCausalLM"], "model_type": "vita-Qwen2", "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "hidden_act": "silu",
        "hidden_size": s.hidden, "initializer_range": 0.02, "intermediate_size": s.intermediate,
        "max_position_embeddings": 32768, "max_window_layers": s.layers, "num_attention_heads": s.heads,
        "num_hidden_layers": s.layers, "num_key_value_heads": s.kv_heads, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.44.2", "use_cache": True, "use_sliding_window": False, "vocab_size": s.vocab,
        "mm_vision_tower": "InternViT-300M-448px", "mm_audio_encoder": AUDIO_ENCODER_DIR,
        "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": s.vit_hidden, "image_aspect_ratio": "square",
        "freeze_audio_encoder": True, "freeze_audio_encoder_adapter": False,
        "tokenizer_model_max_length": 4600, "tokenizer_padding_side": "right",
    }


def write_tiny_checkpoint(out_dir: str | Path, seed: int = 0, sizes: TinySizes | None = None) -> Path:
    """Write the tiny release-layout checkpoint into ``out_dir`` (created); returns the folder."""
    sizes = sizes or TinySizes()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = _tokenizer(out, sizes)
    init = _Init(seed)
    means, istds, cmvn_file = _cmvn_stats(seed)
    tensors: dict[str, torch.Tensor] = {}
    for key, shape in sorted(release_shapes(sizes).items()):
        tensors[key] = init.tensor(key, shape).contiguous()
    tensors["model.audio_encoder.encoder.global_cmvn.mean"] = torch.from_numpy(means)
    tensors["model.audio_encoder.encoder.global_cmvn.istd"] = torch.from_numpy(istds)
    _write_shards(out, tensors, num_shards=2)
    (out / "config.json").write_text(json.dumps(_release_config(sizes, ids), indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "do_sample": False}, indent=2))
    encoder_dir = out / AUDIO_ENCODER_DIR
    encoder_dir.mkdir(exist_ok=True)
    (encoder_dir / "global_cmvn").write_text(json.dumps(cmvn_file))
    _write_speech_head(out, seed, sizes.hidden)
    return out


def _write_shards(out: Path, tensors: dict[str, torch.Tensor], num_shards: int) -> None:
    keys = sorted(tensors)
    weight_map: dict[str, str] = {}
    for k in range(num_shards):
        name = f"model-{k + 1:05d}-of-{num_shards:05d}.safetensors"
        part = keys[k * len(keys) // num_shards:(k + 1) * len(keys) // num_shards]
        save_file({key: tensors[key] for key in part}, str(out / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _write_speech_head(out: Path, seed: int, hidden: int) -> None:
    try:
        from engine.speech.tiny_checkpoint import write_tts_checkpoint
    except ImportError:
        log.warning("engine.speech.tiny_checkpoint is unavailable: vita_tts_ckpt/ not written")
        return
    write_tts_checkpoint(out / "vita_tts_ckpt", seed=seed, llm_hidden_size=hidden)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m engine.tiny_checkpoint OUT_DIR --seed N``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(write_tiny_checkpoint(args.out_dir, seed=args.seed))


if __name__ == "__main__":
    main()
