"""Writes a tiny ``vita_tts_ckpt/`` in the released layout and formats (for tests and demos).

``decoder/model.json`` is the list ``[idim, odim, args]``; ``decoder/final.pt`` is ``{"model": state}``
including the unused ``layers_prefix.*``; ``codec/final.pt`` holds ``generator`` (old-style weight norm:
``weight_g`` + ``weight_v``) and ``quantizer``, without the unused encoder. Sizes are small but keep every
structural feature: 4 AR + 2 NAR layers, 1024 codes + 4 specials, 600 samples per code and a 128-channel
stage that receives the voice vector.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from engine.speech.codec import GLOBAL_DIM, LATENT_DIM, Codec
from engine.speech.config import CodecConfig, DecoderConfig
from engine.speech.decoder import SpeechDecoder

TINY_ODIM = 1024
TINY_GLOBAL_TOKENS = [473, 975, 419, 219, 565, 121, 550, 616]
EOS_BIAS = 2.0
"""Extra output bias on EOS so that random tiny weights end an utterance after a few dozen codes."""


def _decoder_json(idim: int) -> list[object]:
    args = {
        "idim": idim, "odim": TINY_ODIM, "encoder_pre_norm_type": "ln", "encoder_drop_rate": 0.1,
        "encoder_criterion": "ce", "encoder_upsample_rate": 9, "transformer_attention_dim": idim,
        "transformer_linear_units": 3 * idim, "transformer_num_blocks": 4, "transformer_attention_heads": 2,
        "transformer_dropout_rate": 0.1, "encoder_output_dim": idim, "kv_cache_prefix_finetune": 1,
    }
    return [idim, TINY_ODIM, args]


def _codec_json() -> dict[str, object]:
    return {
        "resblock": "1", "upsample_rates": [8, 5, 5, 3], "upsample_kernel_sizes": [16, 11, 11, 5],
        "upsample_initial_channel": 2 * GLOBAL_DIM, "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "n_code_groups": 1, "residul_layer": 1,
        "n_codes": TINY_ODIM, "global_code_num": len(TINY_GLOBAL_TOKENS), "global_tokens": TINY_GLOBAL_TOKENS,
        "global_feature_conv": [128, 64, 128, 3, 1], "codebook_loss_lambda": 1.0,
        "commitment_loss_lambda": 0.25, "sampling_rate": 24000,
    }


def _decoder_state(cfg: DecoderConfig, gen: torch.Generator, eos_bias: float = EOS_BIAS) -> dict[str, torch.Tensor]:
    shapes = {k: v.shape for k, v in SpeechDecoder(cfg).state_dict().items()}
    # The released file also carries the prefix stack (unused at inference); same shapes as "layers.*".
    for key, shape in list(shapes.items()):
        if key.startswith("layers.") and int(key.split(".")[1]) < cfg.num_blocks:
            shapes["layers_prefix." + key[len("layers.") :]] = shape
    state = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key.endswith("norm.weight") or key.endswith("layernorm.weight"):
            t = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif key == "embedding.weight":
            t = 0.5 * torch.randn(shape, generator=gen)
            t[cfg.pad] = 0  # padding_idx row
        elif key.endswith("bias"):
            t = 0.05 * torch.randn(shape, generator=gen)
            t[cfg.eos] += eos_bias
        else:
            t = torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
        state[key] = t.float().contiguous()
    return state


def _codec_state(cfg: CodecConfig, gen: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    model = Codec(cfg)
    generator: dict[str, torch.Tensor] = {}
    for name, module in model.generator.named_modules():
        if not isinstance(module, torch.nn.Conv1d | torch.nn.ConvTranspose1d):
            continue
        w = module.weight
        transposed = isinstance(module, torch.nn.ConvTranspose1d)
        if name == "conv_post":
            gain = 0.205
        elif transposed:
            gain = math.sqrt(w.shape[1] * module.stride[0] / w.shape[0])
        else:
            gain = 1.0
        # weight_g deliberately differs from ‖weight_v‖ so that loading must fold it.
        generator[f"{name}.weight_v"] = torch.randn(w.shape, generator=gen)
        generator[f"{name}.weight_g"] = gain * (0.75 + 0.5 * torch.rand((w.shape[0], 1, 1), generator=gen))
        assert module.bias is not None  # every conv of the generator has one
        generator[f"{name}.bias"] = 0.05 * torch.randn(module.bias.shape, generator=gen)
    quantizer = {
        k: torch.randn(v.shape, generator=gen) for k, v in sorted(model.quantizer.state_dict().items())
    }
    assert quantizer["quantizer_modules.0.embedding.weight"].shape[1] == LATENT_DIM
    return {"generator": generator, "quantizer": quantizer}


def write_tts_checkpoint(folder: Path, seed: int = 0, llm_hidden_size: int = 64, eos_bias: float = EOS_BIAS) -> None:
    """Write ``folder/decoder/{model.json,final.pt}`` and ``folder/codec/{model.json,final.pt}``.

    Deterministic for a ``seed``; the decoder width is ``llm_hidden_size / 4`` so that it fits the
    LLM embedding table the conditioning is read from. ``eos_bias``: how soon random weights end a
    clause; a wider decoder needs less (see ``TinySizes.tts_eos_bias``).
    """
    if llm_hidden_size % 16 or llm_hidden_size <= 0:
        raise ValueError("llm_hidden_size must be a positive multiple of 16 (4 slices × 2 heads × even RoPE)")
    folder = Path(folder)
    (folder / "decoder").mkdir(parents=True, exist_ok=True)
    (folder / "codec").mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)

    dec_json = folder / "decoder" / "model.json"
    dec_json.write_text(json.dumps(_decoder_json(llm_hidden_size // 4), indent=2))
    dec_state = _decoder_state(DecoderConfig.from_json(dec_json), gen, eos_bias)
    torch.save({"model": dec_state}, folder / "decoder" / "final.pt")

    codec_json = folder / "codec" / "model.json"
    codec_json.write_text(json.dumps(_codec_json(), indent=2))
    torch.save(_codec_state(CodecConfig.from_json(codec_json), gen), folder / "codec" / "final.pt")
