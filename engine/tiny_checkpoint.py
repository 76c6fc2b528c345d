"""Write a tiny, randomly initialised VITA-1.5 checkpoint in exactly the released formats.

    python -m engine.tiny_checkpoint OUT_DIR [--seed 0] [--layout release|demo] [--state-tokens single|split]
                                             [--sizes tiny|7b-paced]

Two layouts, as users have them on disk:

* ``release``: the HF release folder as downloaded (``VITA1.5_ckpt``): bf16 safetensors in four shards
  ``model-0000k-of-00004.safetensors`` + ``model.safetensors.index.json``, the release's own
  ``config.json`` (``model_type`` ``vita-Qwen2``), ``generation_config.json``, Qwen2.5's tokenizer files,
  the ``audio-encoder-…`` folder (``global_cmvn``, ``train.yaml``, ``final.pt``) and ``vita_tts_ckpt/``;
* ``demo``: the public demo's prepared folder: the same files after the demo's set-up step, i.e. the
  release ``config.json`` renamed to ``origin_config.json`` and the demo's vLLM-side files copied in
  (``config.json`` with ``text_config``/``vision_config``/``audio_config``, ``preprocessor_config.json``,
  ``feature_extractor/preprocessor_config.json`` with the CMVN statistics inline, the configuration
  modules, ``generation_config.json``).

The tokenizer is :mod:`engine.tiny_tokenizer` (Qwen2.5's format; state tokens as ordinary BPE entries;
placeholders at the real ids 51000/51001, so the vocabulary is sized like a small Qwen). Geometry is tiny
where vLLM's CPU attention allows (head size 64). Deterministic for a seed; nothing is downloaded. The
tests and the CPU demo use it.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import save_file

from engine.tiny_tokenizer import (
    QWEN_SPECIAL_TOKENS,
    STATE_TOKENS,
    StateForm,
    TokenizerFacts,
    write_qwen_tokenizer,
)

log = logging.getLogger(__name__)

AUDIO_ENCODER_DIR = "audio-encoder-Qwen2-7B-1107-weight-base-11wh-tunning"
IMAGE_TOKEN_INDEX, AUDIO_TOKEN_INDEX = 51000, 51001
"""The demo's placeholder ids: ordinary BPE ids of Qwen's vocabulary (the tiny vocabulary holds them too)."""
NUM_SHARDS = 4
Layout = Literal["release", "demo"]
__all__ = ["AUDIO_ENCODER_DIR", "PACED_7B", "QWEN_SPECIAL_TOKENS", "SIZES", "STATE_TOKENS", "TinySizes",
           "release_shapes", "write_tiny_checkpoint"]


@dataclass(frozen=True, slots=True)
class TinySizes:
    """Tiny geometry: every structural feature of the real model, at toy widths."""

    hidden: int = 128
    layers: int = 2
    heads: int = 2  # head size 64: supported by vLLM's CPU attention
    kv_heads: int = 1  # GQA 2:1 as in the real model (28:4)
    intermediate: int = 256
    bpe_vocab: int = 51643
    """BPE entries (Qwen2.5: 151643); must exceed the placeholder ids 51000/51001."""
    vocab: int = 51712
    """Embedding rows: the tokenizer's 51665 entries padded to a multiple of 128 (Qwen2.5: 152064)."""
    vit_hidden: int = 64  # one head of 64, the InternViT head size
    vit_layers: int = 2
    vit_intermediate: int = 128
    audio_hidden: int = 64
    audio_heads: int = 4
    audio_layers: int = 2
    audio_intermediate: int = 128
    tts_eos_bias: float = 2.0
    """Extra output bias on the speech decoder's EOS: random weights then end a clause after a few dozen
    codes (about a second), as real speech of a short clause. At the tiny width 2.0 does that; a wider
    decoder's logits spread differently and ended nearly every clause within 5 codes at 2.0."""


PACED_7B = TinySizes(hidden=384, layers=2, heads=6, kv_heads=2, intermediate=1152, tts_eos_bias=1.25)
"""Still random and small, but with realistic costs for benchmarks: on a 2-core CPU its LLM decodes one
stream at roughly what VITA-1.5-7B decodes per stream on one datacenter GPU with vLLM (target about 80
tokens/s, 12.5 ms a token: the 7B model's 15 GB of bf16 weights read once per step at the 1.2-2 TB/s an
A100/H100 class GPU achieves; measured here 77-85 tokens/s, against 600 for the tiny sizes, whose step is
all overhead). Its speech head (width hidden/4, as the real one) still runs faster than real time.
``bench_duplex`` measures both on the machine it runs on. Head size 64, grouped-query attention 3:1."""
SIZES: dict[str, TinySizes] = {"tiny": TinySizes(), "7b-paced": PACED_7B}
"""The named geometries ``--sizes`` accepts."""


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
    """Every released key (docs/model.md, "Checkpoint keys") with its shape at sizes ``s``."""
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
    """The release's own HF config (``VITAQwen2``): Qwen2 keys + the multimodal training keys, bf16."""
    return {
        "_name_or_path": "VITA-MLLM/VITA-1.5", "architectures": ["VITAQwen2ForCausalLM"],
        "model_type": "vita-Qwen2", "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "hidden_act": "silu",
        "hidden_size": s.hidden, "initializer_range": 0.02, "intermediate_size": s.intermediate,
        "max_position_embeddings": 32768, "max_window_layers": s.layers, "num_attention_heads": s.heads,
        "num_hidden_layers": s.layers, "num_key_value_heads": s.kv_heads, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.44.2", "use_cache": True, "use_sliding_window": False, "vocab_size": s.vocab,
        "mm_vision_tower": "InternViT-300M-448px", "mm_audio_encoder": AUDIO_ENCODER_DIR,
        "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": s.vit_hidden, "image_aspect_ratio": "square",
        "freeze_audio_encoder": True, "freeze_audio_encoder_adapter": False, "use_mm_proj": True,
        "tokenizer_model_max_length": 4600, "tokenizer_padding_side": "right",
    }


def _release_generation_config(ids: dict[str, int]) -> dict[str, object]:
    """Qwen2.5-Instruct's sampling defaults (EOS given as a list): the server must not take them as its own."""
    return {"bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"], "do_sample": True,
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "repetition_penalty": 1.05,
            "temperature": 0.7, "top_p": 0.8, "top_k": 20, "transformers_version": "4.44.2"}


def _demo_config(s: TinySizes, ids: dict[str, int]) -> dict[str, object]:
    """The demo's vLLM-side ``config.json`` (copied over the release one, which becomes ``origin_config.json``)."""
    text = {k: v for k, v in _release_config(s, ids).items() if k in _QWEN2_TEXT_KEYS}
    text |= {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "transformers_version": "4.43.1"}
    vision = {
        "architectures": ["InternVisionModel"], "auto_map": {"AutoConfig": "configuration_intern_vit.InternVisionConfig"},
        "attention_dropout": 0.0, "drop_path_rate": 0.1, "dropout": 0.0, "hidden_act": "gelu",
        "hidden_size": s.vit_hidden, "image_size": 448, "initializer_factor": 1.0, "initializer_range": 0.02,
        "intermediate_size": s.vit_intermediate, "layer_norm_eps": 1e-6, "model_type": "intern_vit_6b",
        "norm_type": "layer_norm", "num_attention_heads": s.vit_hidden // 64, "num_channels": 3,
        "num_hidden_layers": s.vit_layers, "patch_size": 14, "qk_normalization": False, "qkv_bias": True,
        "torch_dtype": "bfloat16", "transformers_version": "4.37.2", "use_flash_attn": True,
    }
    audio = {
        "_name_or_path": "whale_audio_mini", "architectures": ["WhaleAudioModel"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_whale.WhaleConfig",
                     "AutoFeatureExtractor": "processor_whale.WhaleFeatureExtractor"},
        "concat_after": False, "dropout": 0.1, "hidden_act": "relu", "hidden_size": s.audio_hidden,
        "initializer_factor": 0.1, "initializer_range": 0.02, "input_dim": 80,
        "intermediate_size": s.audio_intermediate, "layer_norm_eps": 1e-5, "max_position_embeddings": 5000,
        "model_type": "whale", "norm_type": "layer_norm", "normalize_before": True,
        "num_attention_heads": s.audio_heads, "num_channels": 1, "num_hidden_layers": s.audio_layers,
        "positional_dropout": 0.1, "qk_normalization": False, "qkv_bias": False, "torch_dtype": "float32",
        "transformers_version": "4.42.4", "use_flash_attn": False, "use_relative_pe": True,
    }
    return {
        "architectures": ["Qwen2ForConditionalGeneration"], "image_token_index": IMAGE_TOKEN_INDEX,
        "audio_token_index": AUDIO_TOKEN_INDEX,
        "auto_map": {"AutoConfig": "configuration_qwen2_multimodal.Qwen2MultiModalConfig"},
        "text_config": text, "vision_config": vision, "audio_config": audio, "downsample_ratio": 0.5,
        "dynamic_image_size": True, "max_dynamic_patch": 12, "min_dynamic_patch": 1, "vision_feature_layer": -1,
        "use_thumbnail": True, "tokenizer_model_max_length": 4600, "tokenizer_padding_side": "right",
        "vocab_size": s.vocab,
    }


_QWEN2_TEXT_KEYS = (
    "attention_dropout", "bos_token_id", "eos_token_id", "hidden_act", "hidden_size", "initializer_range",
    "intermediate_size", "max_position_embeddings", "max_window_layers", "num_attention_heads",
    "num_hidden_layers", "num_key_value_heads", "rms_norm_eps", "rope_theta", "sliding_window",
    "tie_word_embeddings", "torch_dtype", "use_cache", "use_sliding_window", "vocab_size",
)

_CLIP_PREPROCESSOR = {
    "crop_size": 448, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 448,
}


def _fbank_preprocessor(means: np.ndarray, istds: np.ndarray) -> dict[str, object]:
    return {
        "auto_map": {"AutoFeatureExtractor": "processor_whale.WhaleFeatureExtractor"},
        "cmvn_istds": [float(x) for x in istds], "cmvn_means": [float(x) for x in means], "cmvn_preload": True,
        "dither": 1.0, "do_ceptral_normalize": True, "feature_extractor_type": "WhaleFeatureExtractor",
        "feature_size": 80, "frame_length": 25, "frame_shift": 10, "normalize_means": True, "normalize_vars": True,
        "num_mel_bins": 80, "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
        "sampling_rate": 16000,
    }


_STAND_IN_MODULE = (
    '"""Stand-in for the VITA demo\'s {name} (written by vita-duplex\'s checkpoint generator).\n\n'
    "The real prepared folder holds VITA's own module here, for transformers' remote code. vita-duplex never\n"
    'imports it (no trust_remote_code): the file exists so that the folder has the released file list.\n"""\n'
)
DEMO_MODULES = ("configuration_qwen2_multimodal.py", "configuration_intern_vit.py", "configuration_whale.py",
                "processor_whale.py")


def write_tiny_checkpoint(out_dir: str | Path, seed: int = 0, sizes: TinySizes | None = None, *,
                          layout: Layout = "release", state_tokens: StateForm = "single") -> Path:
    """Write the tiny checkpoint in ``layout`` into ``out_dir`` (created); returns the folder.

    ``state_tokens``: ``single`` (as Qwen2.5: one BPE token each) or ``split`` (two tokens sharing a
    prefix), to exercise both forms the engine must handle.
    """
    if layout not in ("release", "demo"):
        raise ValueError(f"layout must be 'release' or 'demo', got {layout!r}")
    sizes = sizes or TinySizes()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = write_qwen_tokenizer(out, bpe_size=sizes.bpe_vocab, state_tokens=state_tokens)
    _check_vocab(facts, sizes)
    ids = facts.special_ids
    init = _Init(seed)
    means, istds, cmvn_file = _cmvn_stats(seed)
    tensors: dict[str, torch.Tensor] = {}
    for key, shape in sorted(release_shapes(sizes).items()):
        tensors[key] = init.tensor(key, shape).contiguous()
    tensors["model.audio_encoder.encoder.global_cmvn.mean"] = torch.from_numpy(means)
    tensors["model.audio_encoder.encoder.global_cmvn.istd"] = torch.from_numpy(istds)
    # The release stores every tensor in bf16, the CMVN buffers included (their exact values live in
    # the audio-encoder folder's global_cmvn file and, for the demo, in the feature extractor's JSON).
    _write_shards(out, {k: v.to(torch.bfloat16) for k, v in tensors.items()}, num_shards=NUM_SHARDS)
    release_config = _release_config(sizes, ids)
    _write_json(out / "config.json", release_config)
    _write_json(out / "generation_config.json", _release_generation_config(ids))
    _write_audio_encoder_folder(out / AUDIO_ENCODER_DIR, tensors, cmvn_file, sizes)
    _write_speech_head(out, seed, sizes.hidden, sizes.tts_eos_bias)
    if layout == "demo":
        _write_json(out / "origin_config.json", release_config)
        _write_json(out / "config.json", _demo_config(sizes, ids))
        _write_json(out / "generation_config.json", {"_from_model_config": True, "transformers_version": "4.43.1"})
        _write_json(out / "preprocessor_config.json", _CLIP_PREPROCESSOR)
        (out / "feature_extractor").mkdir(exist_ok=True)
        _write_json(out / "feature_extractor" / "preprocessor_config.json", _fbank_preprocessor(means, istds))
        for name in DEMO_MODULES:
            (out / name).write_text(_STAND_IN_MODULE.format(name=name))
    return out


def _check_vocab(facts: TokenizerFacts, sizes: TinySizes) -> None:
    if facts.total > sizes.vocab:
        raise ValueError(f"tokenizer has {facts.total} entries, more than the model vocabulary {sizes.vocab}")
    if max(IMAGE_TOKEN_INDEX, AUDIO_TOKEN_INDEX) >= facts.bpe_size:
        raise ValueError("the BPE range must hold the placeholder ids 51000/51001")


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _write_audio_encoder_folder(folder: Path, tensors: dict[str, torch.Tensor], cmvn_file: dict[str, object],
                                s: TinySizes) -> None:
    """The release's pre-fine-tuning whale folder: ``global_cmvn`` (WeNet JSON stats), ``train.yaml``,
    ``final.pt`` (fp32 encoder weights; unused at inference: the safetensors copy is authoritative)."""
    folder.mkdir(exist_ok=True)
    (folder / "global_cmvn").write_text(json.dumps(cmvn_file))
    (folder / "train.yaml").write_text(
        "# whale audio encoder (tiny geometry)\n"
        f"input_dim: 80\ncmvn_file: {AUDIO_ENCODER_DIR}/global_cmvn\nis_json_cmvn: true\n"
        "encoder: transformer\nencoder_conf:\n"
        f"  attention_dim: {s.audio_hidden}\n  attention_heads: {s.audio_heads}\n"
        f"  linear_units: {s.audio_intermediate}\n  num_blocks: {s.audio_layers}\n"
        "  input_layer: conv2d\n  pos_enc_layer_type: rel_pos\n  normalize_before: true\n"
        "dataset_conf:\n  fbank_conf:\n    num_mel_bins: 80\n    frame_length: 25\n    frame_shift: 10\n"
        "    dither: 0.0\n")
    prefix = "model.audio_encoder.encoder."
    encoder = {k[len(prefix):]: v.float().clone() for k, v in tensors.items() if k.startswith(prefix)}
    torch.save(encoder, folder / "final.pt")


def _write_shards(out: Path, tensors: dict[str, torch.Tensor], num_shards: int) -> None:
    keys = sorted(tensors)
    weight_map: dict[str, str] = {}
    for k in range(num_shards):
        name = f"model-{k + 1:05d}-of-{num_shards:05d}.safetensors"
        part = keys[k * len(keys) // num_shards:(k + 1) * len(keys) // num_shards]
        save_file({key: tensors[key] for key in part}, str(out / name), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, name)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def _write_speech_head(out: Path, seed: int, hidden: int, eos_bias: float) -> None:
    from engine.speech.tiny_checkpoint import write_tts_checkpoint

    write_tts_checkpoint(out / "vita_tts_ckpt", seed=seed, llm_hidden_size=hidden, eos_bias=eos_bias)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m engine.tiny_checkpoint OUT_DIR --seed N --layout release|demo``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--layout", choices=("release", "demo"), default="release",
                        help="the release folder as downloaded, or the public demo's prepared folder")
    parser.add_argument("--state-tokens", choices=("single", "split"), default="single",
                        help="state tokens as one BPE token each (as Qwen2.5) or as two tokens")
    parser.add_argument("--sizes", choices=tuple(SIZES), default="tiny",
                        help="tiny (tests, demo) or 7b-paced (benchmarks: LLM decode speed like the 7B on a GPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(write_tiny_checkpoint(args.out_dir, seed=args.seed, sizes=SIZES[args.sizes], layout=args.layout,
                                state_tokens=args.state_tokens))


if __name__ == "__main__":
    main()
