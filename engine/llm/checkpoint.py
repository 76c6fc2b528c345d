"""Checkpoint folder resolution: the VITA-1.5 release as downloaded, or the demo's prepared folder.

* **release**: safetensors shards + index, tokenizer files, the release's HF ``config.json``
  (``VITAQwen2`` type), ``vita_tts_ckpt/``, the audio-encoder folder. The vLLM-side values it lacks come
  from :mod:`engine.llm.shipped_config`; tower sizes are read off the tensor shapes.
* **demo**: the public demo's prepared folder, whose ``config.json`` is already the vLLM-side one (the
  release config renamed to ``origin_config.json``).

Nothing in the user's folder is renamed, copied or written: the served config goes to a folder of our own
and vLLM reads it through ``hf_config_path``. Every problem is a :class:`CheckpointError` naming the file
or key.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.llm import shipped_config as shipped
from engine.llm.errors import CheckpointError
from vllm_patches.audio_features import Cmvn
from vllm_patches.config import ARCHITECTURE, MODEL_TYPE
from vllm_patches.weights import CMVN_PREFIX, safetensors_files

log = logging.getLogger(__name__)

Layout = Literal["release", "demo"]
RELEASE_MODEL_TYPES = ("vita-Qwen2", "vita_qwen2")
RELEASE_ARCHITECTURES = ("VITAQwen2ForCausalLM",)
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "special_tokens_map.json", "tokenizer.model")
"""Every file a Hugging Face tokenizer may be made from (those present are linked, never copied)."""
VISION_PREFIX = "model.vision_tower.vision_tower."
AUDIO_PREFIX = "model.audio_encoder.encoder.enc."


@dataclass(frozen=True, slots=True)
class ResolvedCheckpoint:
    """A checkpoint folder understood: its layout and the complete vLLM-side config to serve it with."""

    folder: Path
    layout: Layout
    config: dict[str, Any]
    has_tokenizer: bool

    @property
    def tts_folder(self) -> Path:
        """Where the speech head's checkpoint lives (``vita_tts_ckpt/``)."""
        return self.folder / "vita_tts_ckpt"

    def write_served_config(self, out_dir: Path) -> Path:
        """Write the served ``config.json`` into ``out_dir`` (our folder, never the user's), with links to
        the checkpoint's tokenizer files.

        vLLM loads the tokenizer from this folder too: loading it from the checkpoint makes transformers
        parse the checkpoint's own ``config.json`` first, which the demo's folder declares as remote code
        (``auto_map``) — an ERROR logged per process and a retry. Here it finds our config instead.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(self.config, indent=1))
        for name in TOKENIZER_FILES:
            if (self.folder / name).is_file() and not (out_dir / name).exists():
                (out_dir / name).symlink_to(self.folder / name)
        return out_dir


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def _require(mapping: dict[str, Any], key: str, where: Path | str) -> Any:
    if key not in mapping:
        raise CheckpointError(f"missing key {key!r} in {where}")
    return mapping[key]


class _TensorShapes:
    """Tensor names and shapes from the safetensors headers (no tensor data is read)."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        files = safetensors_files(folder)
        if not files:
            raise CheckpointError(f"no weights in {folder}: expected model.safetensors.index.json or *.safetensors")
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.files: dict[str, Path] = {}
        for path in files:
            if not path.is_file():
                raise CheckpointError(f"missing weight shard named by the index: {path}")
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open handles are not iterable
                    self.shapes[key] = tuple(f.get_slice(key).get_shape())
                    self.files[key] = path

    def shape(self, key: str) -> tuple[int, ...]:
        if key not in self.shapes:
            raise CheckpointError(f"missing tensor {key!r} in the checkpoint's safetensors")
        return self.shapes[key]

    def count_layers(self, prefix: str) -> int:
        ids = {int(k[len(prefix):].split(".", 1)[0]) for k in self.shapes if k.startswith(prefix)}
        return max(ids) + 1 if ids else 0

    def tensor(self, key: str):
        from safetensors import safe_open

        with safe_open(str(self.files[key]), framework="pt") as f:
            return f.get_tensor(key)


def _vision_config(shapes: _TensorShapes) -> dict[str, Any]:
    cfg = dict(shipped.VISION_CONFIG)
    hidden, _, patch, _ = shapes.shape(VISION_PREFIX + "embeddings.patch_embedding.weight")
    positions = shapes.shape(VISION_PREFIX + "embeddings.position_embedding")[1] - 1
    cfg.update(hidden_size=hidden, patch_size=patch, image_size=math.isqrt(positions) * patch,
               intermediate_size=shapes.shape(VISION_PREFIX + "encoder.layers.0.mlp.fc1.weight")[0],
               num_hidden_layers=shapes.count_layers(VISION_PREFIX + "encoder.layers."),
               num_attention_heads=max(1, hidden // shipped.VISION_HEAD_DIM))
    return cfg


def _audio_config(shapes: _TensorShapes) -> dict[str, Any]:
    cfg = dict(shipped.AUDIO_CONFIG)
    layer = AUDIO_PREFIX + "1.encoders.0."
    heads, _ = shapes.shape(layer + "self_attn.pos_bias_u")
    cfg.update(hidden_size=shapes.shape(AUDIO_PREFIX + "1.embed.0.weight")[0], num_attention_heads=heads,
               intermediate_size=shapes.shape(layer + "feed_forward.w_1.weight")[0],
               num_hidden_layers=shapes.count_layers(AUDIO_PREFIX + "1.encoders."))
    return cfg


def _text_config(release: dict[str, Any], where: Path) -> dict[str, Any]:
    text = {k: _require(release, k, where) for k in shipped.TEXT_KEYS_REQUIRED}
    text.update({k: release.get(k, v) for k, v in shipped.TEXT_KEYS_OPTIONAL.items()})
    text.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    return text


def _cmvn(folder: Path, shapes: _TensorShapes) -> Cmvn:
    """CMVN statistics from their exact source (docs/model.md, "Audio features").

    1. the demo's ``feature_extractor/preprocessor_config.json`` (float32 values inline);
    2. the release's ``audio-encoder-*/global_cmvn`` (WeNet sums, exact);
    3. only as a fallback, the checkpoint's buffers ``…global_cmvn.mean/istd``: the release stores them in
       bf16, which moves the features by up to ~2.5e-2, so a warning says so.
    """
    extractor = folder / "feature_extractor" / "preprocessor_config.json"
    if extractor.is_file():
        data = _read_json(extractor)
        return Cmvn.from_lists(_require(data, "cmvn_means", extractor), _require(data, "cmvn_istds", extractor))
    for stats in sorted(folder.glob("audio-encoder-*/global_cmvn")):
        data = _read_json(stats)
        try:
            return Cmvn.from_kaldi_stats(data["mean_stat"], data["var_stat"], float(data["frame_num"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{stats} is not a WeNet CMVN file (mean_stat/var_stat/frame_num): {exc}") from exc
    if CMVN_PREFIX + "mean" in shapes.shapes:
        mean, istd = shapes.tensor(CMVN_PREFIX + "mean"), shapes.tensor(CMVN_PREFIX + "istd")
        log.warning("no exact CMVN statistics in %s (feature_extractor/preprocessor_config.json or "
                    "audio-encoder-*/global_cmvn): using the checkpoint's %s buffers, whose precision "
                    "shifts the audio features slightly", folder, str(mean.dtype).removeprefix("torch."))
        return Cmvn(mean.float().numpy(), istd.float().numpy())
    raise CheckpointError(
        f"no CMVN statistics in {folder}: expected feature_extractor/preprocessor_config.json, "
        f"audio-encoder-*/global_cmvn, or tensors {CMVN_PREFIX}mean/istd")


def _declared_dtype(top: dict[str, Any], layout: Layout) -> str | None:
    """The dtype the checkpoint declares (``dtype``/``torch_dtype``; the demo's lives in ``text_config``)."""
    for cfg in (top, top.get("text_config") or {}) if layout == "demo" else (top,):
        declared = cfg.get("dtype") or cfg.get("torch_dtype")
        if declared:
            return str(declared).removeprefix("torch.")
    return None


def _has_tokenizer(folder: Path) -> bool:
    vocab = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    return (folder / "tokenizer_config.json").is_file() and (vocab or (folder / "tokenizer.json").is_file())


def resolve_checkpoint(folder: str | Path, *, max_dynamic_patch: int = 1) -> ResolvedCheckpoint:
    """Recognise ``folder``'s layout and build the complete vLLM-side config for it."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    config_path = folder / "config.json"
    top = _read_json(config_path)
    shapes = _TensorShapes(folder)
    if all(k in top for k in ("text_config", "vision_config", "audio_config")):
        layout: Layout = "demo"
        served = {k: _require(top, k, config_path) for k in
                  ("text_config", "vision_config", "audio_config", "image_token_index", "audio_token_index")}
        for key in ("downsample_ratio", "min_dynamic_patch", "use_thumbnail"):
            served[key] = top.get(key, shipped.TOP_LEVEL[key])
    elif top.get("model_type") in RELEASE_MODEL_TYPES or set(top.get("architectures", [])) & set(
            RELEASE_ARCHITECTURES):
        layout = "release"
        served = dict(shipped.TOP_LEVEL, text_config=_text_config(top, config_path),
                      vision_config=_vision_config(shapes), audio_config=_audio_config(shapes))
    else:
        raise CheckpointError(
            f"unknown checkpoint layout in {folder}: config.json is neither the VITA-1.5 release config "
            f"(model_type {RELEASE_MODEL_TYPES[0]!r}) nor the demo's vLLM-side config (text/vision/audio_config)")
    vocab = int(_require(served["text_config"], "vocab_size", config_path))
    for key in ("image_token_index", "audio_token_index"):
        if not 0 <= int(served[key]) < vocab:
            raise CheckpointError(f"{key} {served[key]} is outside the vocabulary (size {vocab})")
    cmvn = _cmvn(folder, shapes)
    if (dtype := _declared_dtype(top, layout)) is not None:
        served["dtype"] = dtype  # vLLM's dtype="auto" serves what the checkpoint declares (bf16 for the release)
    served.update(
        model_type=MODEL_TYPE, architectures=[ARCHITECTURE], max_dynamic_patch=int(max_dynamic_patch),
        cmvn_means=cmvn.means.tolist(), cmvn_istds=cmvn.istds.tolist(), tie_word_embeddings=False)
    return ResolvedCheckpoint(folder, layout, served, _has_tokenizer(folder))
