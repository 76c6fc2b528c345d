"""Typed views of ``vita_tts_ckpt/{decoder,codec}/model.json`` and the speech-head options.

Only the keys that the released inference code reads are parsed; every other key is ignored, as the
reference does (docs/model.md, "Speech decoder config", "Codec"). Sizes are never hard-coded: they
come from the JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.speech.errors import SpeechCheckpointError

SAMPLES_PER_CODE_EXPECTED = 600
"""24 kHz / 40 codes per second: the product of the released upsample rates."""


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise SpeechCheckpointError(f"missing {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpeechCheckpointError(f"{path} is not valid JSON: {exc}") from exc


def _int(args: dict[str, Any], key: str, path: Path, minimum: int = 1) -> int:
    value = args.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpeechCheckpointError(f"{path}: key {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _int_list(args: dict[str, Any], key: str, path: Path, minimum: int = 1) -> tuple[int, ...]:
    value = args.get(key)
    if not isinstance(value, list) or not value or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in value
    ):
        raise SpeechCheckpointError(f"{path}: key {key!r} must be a non-empty list of integers >= {minimum}")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class DecoderConfig:
    """Sizes of the NAR+AR speech decoder (``LLM2TTSCodecAR``)."""

    idim: int
    """Width of the decoder embedding and of each conditioning slice (LLM hidden / 4)."""
    odim: int
    """Codec vocabulary size V; the special ids are V..V+3."""
    hidden: int
    intermediate: int
    num_blocks: int
    """AR layers; the NAR ``pre_nn`` stack has ``num_blocks // 2``."""
    num_heads: int
    output_dim: int
    prefix_layers: bool
    """Whether the (unused at inference) ``layers_prefix`` stack exists in the checkpoint."""
    rms_eps: float = 1e-6
    rope_theta: float = 10_000.0
    max_positions: int = 2048

    @property
    def bos(self) -> int:
        """Start of the conditioning prefix."""
        return self.odim

    @property
    def sos(self) -> int:
        """Start of speech codes."""
        return self.odim + 1

    @property
    def eos(self) -> int:
        """End of speech (never emitted)."""
        return self.odim + 2

    @property
    def pad(self) -> int:
        """Padding id (embedding row is unused)."""
        return self.odim + 3

    @property
    def vocab(self) -> int:
        """Codes plus the four special ids."""
        return self.odim + 4

    @property
    def head_dim(self) -> int:
        """Per-head width of the attention."""
        return self.hidden // self.num_heads

    @classmethod
    def from_json(cls, path: Path) -> DecoderConfig:
        """Parse ``decoder/model.json``: a list ``[idim, odim, args]`` whose ``args`` are authoritative."""
        raw = _read_json(path)
        if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[2], dict)):
            raise SpeechCheckpointError(f"{path}: expected a JSON list [idim, odim, args]")
        args = raw[2]
        cfg = cls(
            idim=_int(args, "idim", path),
            odim=_int(args, "odim", path),
            hidden=_int(args, "transformer_attention_dim", path),
            intermediate=_int(args, "transformer_linear_units", path),
            num_blocks=_int(args, "transformer_num_blocks", path, minimum=2),
            num_heads=_int(args, "transformer_attention_heads", path),
            output_dim=_int(args, "encoder_output_dim", path),
            prefix_layers=bool(args.get("kv_cache_prefix_finetune", 0)),
        )
        # The BOS embedding and the conditioning slices enter the Llama layers directly
        # (docs/model.md, "Speech decoder config").
        if cfg.hidden != cfg.idim or cfg.output_dim != cfg.hidden:
            raise SpeechCheckpointError(
                f"{path}: transformer_attention_dim ({cfg.hidden}) and encoder_output_dim "
                f"({cfg.output_dim}) must equal idim ({cfg.idim})"
            )
        if cfg.hidden % cfg.num_heads or cfg.head_dim % 2:
            raise SpeechCheckpointError(f"{path}: attention dim {cfg.hidden} does not split into even heads")
        return cfg


@dataclass(frozen=True, slots=True)
class CodecConfig:
    """Sizes of the TiCodec generator and quantizer, plus the fixed voice (global tokens)."""

    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    n_codes: int
    global_tokens: tuple[int, ...]
    sample_rate: int = 24_000

    @property
    def samples_per_code(self) -> int:
        """Waveform samples produced per code (600 for the released model)."""
        out = 1
        for rate in self.upsample_rates:
            out *= rate
        return out

    @classmethod
    def from_json(cls, path: Path) -> CodecConfig:
        """Parse ``codec/model.json`` (an object) and check the constraints VITA relies on."""
        raw = _read_json(path)
        if not isinstance(raw, dict):
            raise SpeechCheckpointError(f"{path}: expected a JSON object")
        if str(raw.get("resblock", "1")) != "1":
            raise SpeechCheckpointError(f"{path}: only resblock '1' is supported (VITA-1.5 uses it)")
        for key in ("n_code_groups", "residul_layer"):
            if raw.get(key, 1) != 1:
                raise SpeechCheckpointError(f"{path}: {key} must be 1 (one code per step)")
        dilations = raw.get("resblock_dilation_sizes")
        if not isinstance(dilations, list) or not all(
            isinstance(d, list) and d and all(isinstance(x, int) and x > 0 for x in d) for d in dilations
        ):
            raise SpeechCheckpointError(f"{path}: resblock_dilation_sizes must be a list of integer lists")
        cfg = cls(
            upsample_rates=_int_list(raw, "upsample_rates", path),
            upsample_kernel_sizes=_int_list(raw, "upsample_kernel_sizes", path),
            upsample_initial_channel=_int(raw, "upsample_initial_channel", path),
            resblock_kernel_sizes=_int_list(raw, "resblock_kernel_sizes", path),
            resblock_dilation_sizes=tuple(tuple(d) for d in dilations),
            n_codes=_int(raw, "n_codes", path),
            global_tokens=_int_list(raw, "global_tokens", path, minimum=0),
            sample_rate=int(raw.get("sampling_rate", 24_000)),
        )
        if len(cfg.upsample_rates) != len(cfg.upsample_kernel_sizes):
            raise SpeechCheckpointError(f"{path}: upsample_rates and upsample_kernel_sizes differ in length")
        if len(cfg.resblock_kernel_sizes) != len(cfg.resblock_dilation_sizes):
            raise SpeechCheckpointError(f"{path}: resblock kernel and dilation lists differ in length")
        if any(t >= cfg.n_codes for t in cfg.global_tokens):
            raise SpeechCheckpointError(f"{path}: a global token is outside the {cfg.n_codes}-entry codebook")
        return cfg
