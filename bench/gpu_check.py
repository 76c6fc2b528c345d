"""GPU check of VITA-1.5's towers and speech head at the released sizes, in plain torch (no vLLM).

On a CUDA machine that has a copy of this repository and a ``python3`` with torch, numpy and safetensors
(no venv, no vLLM, nothing installed; e.g. the lent GPU box):

    cd <repo> && python3 bench/gpu_check.py --out $OUT/gpu_check.json      # about 1-3 minutes

CPU smoke run at tiny sizes (what ``tests/test_gpu_check.py`` runs):

    .venv/bin/python bench/gpu_check.py --device cpu --small --out /tmp/gpu_check.json

What it does, with random weights generated in memory (nothing large is written; the 7B LLM is not built):

1. Vision tower (InternViT-300M: 24 layers, 1024 wide) + ×0.5 pixel shuffle + projector (4096→3584→3584),
   and the whale audio encoder (24 layers, 1024 wide) + adapter, from a state dict under the *released*
   key names, loaded through the project's rename table (``vllm_patches.weights``).
2. Speech decoder (idim 896, 4 AR + 2 NAR layers, 14 heads) and TiCodec (512 channels) written in the
   released file layout (``model.json`` + ``final.pt``, weight-normed codec) and loaded by the project's
   own loaders (a few hundred MB in a temporary folder).
3. Runs each stage on the device in float32, bfloat16 and float16 and compares with float32 on the CPU:
   max abs error, relative error ``‖out − ref‖ / ‖ref‖`` (decoder: also argmax/top-2 agreement of the
   logits; codec: SNR). TF32 is off, so float32 on the device must match the CPU closely.
4. Times the speech path as served (decoder bf16 on CUDA, codec fp32): first audio through the
   project's :class:`~engine.speech.head.ReplySynthesizer` and streaming vocoder (10 codes), AR steps/s,
   vocoder real-time factor.

Writes JSON (``--out``, default ``docs/bench/gpu_check.json``) and prints a summary. Without a CUDA device
(and ``--device cuda``, the default) it writes ``{"status": "skipped", ...}`` and exits 0. Exit status 1
when a stage fails (error, non-finite output or error above the tolerance).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file from a bare copy of the repo: the project is not installed
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "docs" / "bench" / "gpu_check.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1, "float16": 0.05}
"""Largest relative error ``‖out − ref‖ / ‖ref‖`` accepted per dtype (random weights; a broken kernel or
an overflow is far above these, rounding is far below)."""
TOWER_PREFIXES = ("model.vision_tower.", "model.mm_projector.", "model.audio_encoder.")
MS_PER_CODE = 25.0


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and workload of one run (``FULL``: the release; ``SMALL``: a CPU smoke run)."""

    name: str
    llm_hidden: int
    vit_hidden: int
    vit_layers: int
    vit_intermediate: int
    audio_hidden: int
    audio_heads: int
    audio_layers: int
    audio_intermediate: int
    tts_idim: int
    tts_heads: int
    tts_units: int
    codec_channels: int
    tiles: int
    clip_seconds: tuple[float, ...]
    text_tokens: int
    teacher_codes: int
    codec_codes: int
    ar_steps: int
    stream_codes: int
    repeats: int


FULL = Plan("full", llm_hidden=3584, vit_hidden=1024, vit_layers=24, vit_intermediate=4096, audio_hidden=1024,
            audio_heads=16, audio_layers=24, audio_intermediate=4096, tts_idim=896, tts_heads=14, tts_units=4864,
            codec_channels=512, tiles=2, clip_seconds=(3.0, 5.0), text_tokens=10, teacher_codes=40,
            codec_codes=80, ar_steps=200, stream_codes=200, repeats=5)
SMALL = Plan("small", llm_hidden=128, vit_hidden=64, vit_layers=2, vit_intermediate=128, audio_hidden=64,
             audio_heads=4, audio_layers=2, audio_intermediate=128, tts_idim=32, tts_heads=2, tts_units=96,
             codec_channels=256, tiles=1, clip_seconds=(1.0, 1.5), text_tokens=10, teacher_codes=12,
             codec_codes=20, ar_steps=20, stream_codes=30, repeats=1)


# --------------------------------------------------------------------------------------------------
# helpers


def _num(x: float) -> float | None:
    """A JSON-safe float (non-finite → ``None``)."""
    x = float(x)
    return x if math.isfinite(x) else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[Any, list[float]]:
    """One warm-up call, then ``repeats`` timed calls; returns the last result and the times in ms."""
    out = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return out, times


def compare(ref: torch.Tensor, out: torch.Tensor) -> dict[str, Any]:
    """Errors of ``out`` against the fp32 CPU reference (both upcast to float64 on the CPU)."""
    r, o = ref.detach().double().cpu(), out.detach().double().cpu()
    if r.shape != o.shape:
        raise ValueError(f"shape {tuple(o.shape)} != reference {tuple(r.shape)}")
    finite = torch.isfinite(o)
    diff = (o - r).abs()
    ref_norm = float(r.norm())
    return {
        "max_abs_err": _num(diff.max()) if bool(finite.all()) else None,
        "rel_err": _num(float((o - r).norm()) / ref_norm) if ref_norm > 0 and bool(finite.all()) else None,
        "ref_max_abs": _num(r.abs().max()),
        "nonfinite": int((~finite).sum()),
    }


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# --------------------------------------------------------------------------------------------------
# models (project modules only; none of them imports vLLM)


class Towers(nn.Module):
    """The vision path and the audio path, under the module names the project's rename table targets."""

    def __init__(self, plan: Plan) -> None:
        from vllm_patches.audio_tower import AudioPath
        from vllm_patches.geometry import AudioGeometry, VisionGeometry
        from vllm_patches.vision_tower import VisionPath

        super().__init__()
        self.vision = VisionPath(VisionGeometry(hidden_size=plan.vit_hidden, num_layers=plan.vit_layers,
                                                num_heads=plan.vit_hidden // 64,
                                                intermediate_size=plan.vit_intermediate), plan.llm_hidden)
        self.audio = AudioPath(AudioGeometry(hidden_size=plan.audio_hidden, num_layers=plan.audio_layers,
                                             num_heads=plan.audio_heads,
                                             intermediate_size=plan.audio_intermediate), plan.llm_hidden)


def _random_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Random weights with realistic scales: unit-ish norms, 1/√fan-in matrices, small biases."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "bias":
        return 0.02 * torch.randn(shape, generator=gen)
    if any(n in key for n in ("norm", "bn2", "embed.1")):
        return 1 + 0.1 * torch.randn(shape, generator=gen)
    if leaf in ("ls1", "ls2"):
        return 0.5 + torch.rand(shape, generator=gen)
    if leaf.startswith("pos_bias"):
        return 0.2 * torch.randn(shape, generator=gen)
    if leaf in ("class_embedding", "position_embedding"):
        return 0.5 * torch.randn(shape, generator=gen)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=gen) * fan_in**-0.5


def build_towers(plan: Plan, seed: int) -> tuple[Towers, dict[str, Any]]:
    """Towers filled, key by key, from a random state dict with the released names and shapes."""
    from engine.tiny_checkpoint import TinySizes, release_shapes
    from vllm_patches.weights import is_skipped, module_name

    sizes = TinySizes(hidden=plan.llm_hidden, layers=0, heads=max(1, plan.llm_hidden // 128), kv_heads=1,
                      vit_hidden=plan.vit_hidden, vit_layers=plan.vit_layers, vit_intermediate=plan.vit_intermediate,
                      audio_hidden=plan.audio_hidden, audio_heads=plan.audio_heads, audio_layers=plan.audio_layers,
                      audio_intermediate=plan.audio_intermediate)
    shapes = {k: v for k, v in release_shapes(sizes).items() if k.startswith(TOWER_PREFIXES)}
    towers = Towers(plan).eval().requires_grad_(False)
    params = towers.state_dict()
    gen = torch.Generator().manual_seed(seed)
    consumed, skipped = set(), []
    with torch.no_grad():
        for key in sorted(shapes):
            if is_skipped(key):
                skipped.append(key)
                continue
            name = module_name(key)
            if name not in params or tuple(params[name].shape) != tuple(shapes[key]):
                got = tuple(params[name].shape) if name in params else None
                raise KeyError(f"released key {key} {shapes[key]} → {name} {got}: no such parameter/shape")
            params[name].copy_(_random_tensor(key, shapes[key], gen))
            consumed.add(name)
    missing = sorted(set(params) - consumed)
    if missing:
        raise KeyError(f"parameters no released key filled: {missing[:5]}")
    return towers, {"released_keys": len(shapes), "skipped_keys": skipped}


def _decoder_json(plan: Plan) -> list[Any]:
    """``vita_tts_ckpt/decoder/model.json`` (architecture.md §2.1; small: same keys, toy widths)."""
    args = {"idim": plan.tts_idim, "odim": 1024, "encoder_pre_norm_type": "ln", "encoder_drop_rate": 0.1,
            "encoder_criterion": "ce", "encoder_upsample_rate": 9, "transformer_attention_dim": plan.tts_idim,
            "transformer_linear_units": plan.tts_units, "transformer_num_blocks": 4,
            "transformer_attention_heads": plan.tts_heads, "transformer_dropout_rate": 0.1,
            "encoder_output_dim": plan.tts_idim, "kv_cache_prefix_finetune": 1}
    return [plan.tts_idim, 1024, args]


def _codec_json(plan: Plan) -> dict[str, Any]:
    """``vita_tts_ckpt/codec/model.json`` (architecture.md §3.1)."""
    return {"resblock": "1", "upsample_rates": [8, 5, 5, 3], "upsample_kernel_sizes": [16, 11, 11, 5],
            "upsample_initial_channel": plan.codec_channels, "resblock_kernel_sizes": [3, 7, 11],
            "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "n_code_groups": 1, "residul_layer": 1,
            "n_codes": 1024, "global_code_num": 8, "global_tokens": [473, 975, 419, 219, 565, 121, 550, 616],
            "global_feature_conv": [128, 64, 128, 3, 1], "codebook_loss_lambda": 1.0,
            "commitment_loss_lambda": 0.25, "sampling_rate": 24000}


def build_speech(plan: Plan, seed: int, folder: Path) -> tuple[Any, Any, Any]:
    """Decoder + codec written in the released layout into ``folder`` and loaded by the project's loaders;
    plus an LLM embedding table file (a few hundred rows) for the conditioning."""
    from safetensors.torch import save_file

    from engine.speech.codec import Codec
    from engine.speech.conditioning import EMBED_KEY, EmbeddingTable
    from engine.speech.config import CodecConfig, DecoderConfig
    from engine.speech.decoder import SpeechDecoder
    from engine.speech.tiny_checkpoint import _codec_state, _decoder_state

    gen = torch.Generator().manual_seed(seed + 1)
    (folder / "decoder").mkdir(parents=True)
    (folder / "codec").mkdir()
    (folder / "decoder" / "model.json").write_text(json.dumps(_decoder_json(plan)))
    (folder / "codec" / "model.json").write_text(json.dumps(_codec_json(plan)))
    dec_cfg = DecoderConfig.from_json(folder / "decoder" / "model.json")
    torch.save({"model": _decoder_state(dec_cfg, gen)}, folder / "decoder" / "final.pt")
    torch.save(_codec_state(CodecConfig.from_json(folder / "codec" / "model.json"), gen), folder / "codec" / "final.pt")
    decoder, _ = SpeechDecoder.from_files(folder / "decoder")
    codec, _ = Codec.from_files(folder / "codec")
    # Qwen2.5's input-embedding rows have std ≈ 0.02; the real table has 152064 rows, 256 are enough here.
    rows = (0.02 * torch.randn(256, 4 * plan.tts_idim, generator=gen)).to(torch.bfloat16)
    save_file({EMBED_KEY: rows}, str(folder / "model.safetensors"))
    table = EmbeddingTable.from_checkpoint(folder)
    return decoder, codec, table


# --------------------------------------------------------------------------------------------------
# stages


@dataclass(slots=True)
class Stage:
    """A model (fp32, CPU) and how to run it on inputs placed on a device in a dtype."""

    name: str
    model: nn.Module
    run: Callable[[nn.Module, torch.device, torch.dtype], dict[str, torch.Tensor]]
    describe: str


def _stages(plan: Plan, towers: Towers, decoder: Any, codec: Any, seed: int) -> list[Stage]:
    g = torch.Generator().manual_seed(seed + 2)
    pixels = torch.randn(plan.tiles, 3, 448, 448, generator=g)  # normalised pixels: ~N(0, 1)
    frames = [1 + (int(s * 16000) - 400) // 160 for s in plan.clip_seconds]  # fbank frames of each clip
    clips = [torch.randn(t, 80, generator=g) for t in frames]  # CMVN-normalised fbank: ~N(0, 1)
    cond = 0.02 * torch.randn(4 * plan.text_tokens, decoder.cfg.idim, generator=g)
    teacher = torch.randint(0, decoder.cfg.odim, (plan.teacher_codes,), generator=g).tolist()
    codes = torch.randint(0, codec.cfg.n_codes, (plan.codec_codes,), generator=g).tolist()

    def vision(m: nn.Module, dev: torch.device, dt: torch.dtype) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return {"embeddings": m(pixels.to(dev, dt))}

    def audio(m: nn.Module, dev: torch.device, dt: torch.dtype) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return {"embeddings": torch.cat(m.embed_clips([c.to(dev, dt) for c in clips]))}

    def speech_decoder(m: nn.Module, dev: torch.device, dt: torch.dtype) -> dict[str, torch.Tensor]:
        state = m.start(cond, plan.teacher_codes + 1, keep_debug=True)
        logits = [m.step(state, m.cfg.sos)] + [m.step(state, c) for c in teacher[:-1]]
        return {"prefix": state.extra["prefix"], "logits": torch.stack(logits)}

    def vocoder(m: nn.Module, dev: torch.device, dt: torch.dtype) -> dict[str, torch.Tensor]:
        return {"waveform": torch.from_numpy(m.decode(codes))}

    return [
        Stage("vision", towers.vision, vision, f"{plan.tiles} tiles 448x448 → ViT → ×0.5 pixel shuffle → projector"),
        Stage("audio", towers.audio, audio,
              f"clips of {', '.join(f'{s:g}' for s in plan.clip_seconds)} s ({frames} fbank frames) as one padded "
              "batch → whale encoder → adapter"),
        Stage("speech_decoder", decoder, speech_decoder,
              f"{plan.text_tokens} text tokens (prefix {4 * plan.text_tokens + 1}) + {plan.teacher_codes} "
              "teacher-forced AR steps → logits"),
        Stage("codec", codec, vocoder, f"{plan.codec_codes} codes → {plan.codec_codes * 600} samples at 24 kHz"),
    ]


def _extra_metrics(stage: str, ref: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> dict[str, Any]:
    if stage == "speech_decoder":
        r, o = ref["logits"].float().cpu(), out["logits"].float().cpu()
        top2 = [set(a.tolist()) == set(b.tolist()) for a, b in zip(r.topk(2).indices, o.topk(2).indices, strict=True)]
        return {"argmax_agreement": float((r.argmax(-1) == o.argmax(-1)).float().mean()),
                "top2_set_agreement": sum(top2) / len(top2)}
    if stage == "codec":
        r, o = ref["waveform"].double(), out["waveform"].double()
        noise = float(((o - r) ** 2).sum())
        return {"snr_db": _num(10 * math.log10(float((r**2).sum()) / noise)) if noise > 0 else None}
    return {}


def run_stage(stage: Stage, device: torch.device, dtypes: list[str], repeats: int) -> dict[str, Any]:
    """The stage in fp32 on the CPU (reference), then on ``device`` in each dtype, with errors and times."""
    cpu = torch.device("cpu")
    ref, ref_ms = _timed(lambda: stage.run(stage.model, cpu, torch.float32), cpu, 1)
    result: dict[str, Any] = {
        "what": stage.describe, "params": _params(stage.model),
        "outputs": {k: list(v.shape) for k, v in ref.items()}, "cpu_fp32_ms": round(ref_ms[0], 2), "dtypes": {},
    }
    for name in dtypes:
        dt = DTYPES[name]
        entry: dict[str, Any] = {}
        model = None
        try:
            model = copy.deepcopy(stage.model).to(device, dt)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            out, times = _timed(lambda m=model, d=dt: stage.run(m, device, d), device, repeats)
            entry["ms"] = round(statistics.median(times), 3)
            entry["weights_mb"] = round(_bytes(model) / 2**20, 1)
            if device.type == "cuda":
                entry["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            entry["outputs"] = {k: compare(ref[k], out[k]) for k in ref}
            entry |= _extra_metrics(stage.name, ref, out)
            main = entry["outputs"][next(iter(ref))]
            problems = []
            if any(o["nonfinite"] for o in entry["outputs"].values()):
                problems.append("non-finite output")
            worst = max((o["rel_err"] or 0.0) for o in entry["outputs"].values())
            if worst > TOLERANCE[name]:
                problems.append(f"rel_err {worst:.3g} > {TOLERANCE[name]:g}")
            entry["rel_err"], entry["max_abs_err"] = main["rel_err"], main["max_abs_err"]
            entry["ok"], entry["problems"] = not problems, problems
        except Exception as exc:  # one broken dtype must not hide the others' results
            entry |= {"ok": False, "problems": [f"{type(exc).__name__}: {exc}"],
                      "traceback": traceback.format_exc(limit=6)}
        finally:
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        result["dtypes"][name] = entry
    return result


# --------------------------------------------------------------------------------------------------
# speech timing (as served)


def speech_timing(plan: Plan, decoder: Any, codec: Any, table: Any, device: torch.device, seed: int) -> dict[str, Any]:
    """First audio through the project's reply path, AR steps/s and the vocoder's real-time factor."""
    from engine.speech.head import SpeechHead
    from engine.speech.options import SpeechOptions
    from engine.speech.sampler import CodeSampler
    from engine.speech.streaming import StreamingVocoder

    dec_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # SpeechHead.from_checkpoint's choice
    dec = copy.deepcopy(decoder).to(device, dec_dtype)
    voc = copy.deepcopy(codec).to(device)  # the codec always runs in fp32
    head = SpeechHead(dec, voc, table, SpeechOptions())
    head.mask[dec.cfg.eos] = True  # random weights: timing runs must not stop at an early EOS
    token_ids = list(range(1, plan.text_tokens + 1))
    opts = head.options.streaming

    def first_audio(i: int) -> tuple[float, int, int]:
        t0 = time.perf_counter()
        synth = head.new_reply(f"gpu-check-{i}", 0, tokenizer=None, seed=seed + i)
        synth.push_token_ids(token_ids)
        synth.end_text()
        chunks = synth.chunks()
        chunk = next(chunks)
        ms = 1e3 * (time.perf_counter() - t0)
        codes = len(synth.spoken_codes[-1])
        synth.cancel()
        chunks.close()
        return ms, codes, chunk.num_samples

    first_audio(-1)  # warm-up (kernels, allocator)
    runs = [first_audio(i) for i in range(max(3, plan.repeats))]

    cond = table.conditioning(token_ids)
    _, prefix_ms = _timed(lambda: dec.start(cond, plan.ar_steps + 1), device, plan.repeats)

    def ar_run() -> float:
        state = dec.start(cond, plan.ar_steps + 1)
        sampler, token = CodeSampler(head.options.top_k, head.mask, seed), dec.cfg.sos
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(plan.ar_steps):
            token = sampler.sample(dec.step(state, token))
        return time.perf_counter() - t0

    ar_run()
    ar_s = statistics.median(ar_run() for _ in range(plan.repeats))
    g = np.random.default_rng(seed)
    first_codes = g.integers(0, 1024, opts.first_chunk_codes + opts.first_lookahead_codes).tolist()
    whole_codes = g.integers(0, 1024, plan.codec_codes).tolist()
    stream_codes = g.integers(0, 1024, plan.stream_codes).tolist()
    _, first_codec_ms = _timed(lambda: voc.decode(first_codes), device, plan.repeats)
    _, whole_ms = _timed(lambda: voc.decode(whole_codes), device, plan.repeats)

    def streamed() -> None:
        v = StreamingVocoder(voc.decode, voc.samples_per_code, opts)
        for c in stream_codes:
            v.push(c)
        v.finish()

    _, stream_ms = _timed(streamed, device, plan.repeats)
    ms = [r[0] for r in runs]
    return {
        "decoder_dtype": str(dec_dtype).removeprefix("torch."), "codec_dtype": "float32",
        "first_audio": {
            "text_tokens": plan.text_tokens, "codes_before_first_audio": runs[0][1],
            "first_chunk_audio_ms": runs[0][2] / 24.0, "ms_median": round(statistics.median(ms), 2),
            "ms_min": round(min(ms), 2), "ms_all": [round(x, 2) for x in ms],
            "what": "token ids pushed → conditioning → prefix → AR steps with top-2 sampling → streaming "
                    "vocoder window (codec decode) → PCM16 AudioChunk, through ReplySynthesizer",
        },
        "breakdown_ms": {
            "prefix": round(statistics.median(prefix_ms), 3),
            "ar_step": round(1e3 * ar_s / plan.ar_steps, 3),
            f"codec_decode_{len(first_codes)}_codes": round(statistics.median(first_codec_ms), 3),
        },
        "ar_steps_per_s": round(plan.ar_steps / ar_s, 1), "ar_steps_measured": plan.ar_steps,
        "realtime_codes_per_s": 1e3 / MS_PER_CODE,
        "vocoder": {
            "whole_codes": plan.codec_codes,
            "whole_rtf": round(statistics.median(whole_ms) / (plan.codec_codes * MS_PER_CODE), 4),
            "streaming_codes": plan.stream_codes,
            "streaming_rtf": round(statistics.median(stream_ms) / (plan.stream_codes * MS_PER_CODE), 4),
        },
    }


# --------------------------------------------------------------------------------------------------
# main


def _environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "numpy": np.__version__,
                           "cpu_threads": torch.get_num_threads(), "platform": platform.platform()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count}
    return env


def _summary(result: dict[str, Any]) -> str:
    lines = [f"gpu_check: {result['status']} ({result.get('mode')}, {result.get('device')})"]
    if result["status"] == "skipped":
        return lines[0] + f": {result['reason']}"
    for name, stage in result.get("stages", {}).items():
        cells = []
        for dt, e in stage["dtypes"].items():
            if "ms" not in e:
                cells.append(f"{dt} ERROR")
                continue
            rel = "n/a" if e.get("rel_err") is None else f"{e['rel_err']:.2e}"
            cells.append(f"{dt} rel {rel} {e['ms']:.1f} ms{'' if e['ok'] else ' FAIL'}")
        lines.append(f"  {name:15s} " + " | ".join(cells))
    t = result.get("speech_timing")
    if t:
        fa = t["first_audio"]
        lines.append(f"  first audio after {fa['codes_before_first_audio']} codes: {fa['ms_median']:.1f} ms "
                     f"(decoder {t['decoder_dtype']}); AR {t['ar_steps_per_s']:.0f} steps/s (real time 40); "
                     f"vocoder RTF whole {t['vocoder']['whole_rtf']:.4f}, streaming {t['vocoder']['streaming_rtf']:.4f}")
    for f in result.get("failures", []):
        lines.append(f"  FAIL {f}")
    return "\n".join(lines)


def _write(result: dict[str, Any], out: Path, explicit: bool) -> None:
    if result["status"] == "skipped" and not explicit and out.is_file():
        with contextlib.suppress(ValueError, OSError):
            if json.loads(out.read_text()).get("status") != "skipped":
                print(f"(kept the earlier GPU result in {out}; pass --out to write this one)")
                return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything but the output: the result dict."""
    plan = SMALL if args.small else FULL
    device = torch.device(args.device)
    command = "python3 bench/gpu_check.py" + (" --small" if args.small else "") + f" --device {args.device}"
    result: dict[str, Any] = {"status": "ok", "mode": plan.name, "device": args.device, "command": command}
    if device.type == "cuda" and not torch.cuda.is_available():
        return result | {"status": "skipped", "reason": "skipped: no CUDA device",
                         "environment": _environment(torch.device("cpu"))}
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on the device must be a true fp32 baseline
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(args.seed)
    result |= {"environment": _environment(device), "plan": asdict(plan), "reference": "float32 on the CPU",
               "tolerance_rel_err": TOLERANCE, "tf32": False, "failures": []}
    if device.type == "cuda":
        result["device"] = f"{args.device} ({torch.cuda.get_device_name(device)})"
    try:
        t0 = time.perf_counter()
        towers, tower_info = build_towers(plan, args.seed)
        with tempfile.TemporaryDirectory(prefix="vita-gpu-check-") as tmp:
            decoder, codec, table = build_speech(plan, args.seed, Path(tmp))
            result["build_s"] = round(time.perf_counter() - t0, 1)
            result["weights"] = tower_info | {
                "vision_params": _params(towers.vision.vision_tower),
                "projector_params": _params(towers.vision.vision_projector),
                "audio_params": _params(towers.audio), "speech_decoder_params": _params(decoder),
                "codec_params": _params(codec),
            }
            result["stages"] = {}
            for stage in _stages(plan, towers, decoder, codec, args.seed):
                result["stages"][stage.name] = run_stage(stage, device, args.dtypes, plan.repeats)
                for dt, e in result["stages"][stage.name]["dtypes"].items():
                    result["failures"] += [f"{stage.name} {dt}: {p}" for p in e["problems"]]
            result["speech_timing"] = speech_timing(plan, decoder, codec, table, device, args.seed)
    except Exception as exc:
        result["failures"].append(f"{type(exc).__name__}: {exc}")
        result["traceback"] = traceback.format_exc()
    result["status"] = "failed" if result["failures"] else "ok"
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the check, write the JSON, print the summary; 0 = ok or skipped, 1 = a stage failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="device to check (default cuda; cpu for a smoke run)")
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU smoke run) instead of the release's")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT})")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16", help="comma-separated dtypes to check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in args.dtypes if d not in DTYPES]
    if unknown:
        parser.error(f"unknown dtypes {unknown}; choose from {sorted(DTYPES)}")
    result = run(args)
    _write(result, args.out or DEFAULT_OUT, explicit=args.out is not None)
    print(_summary(result))
    return 1 if result["status"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
