"""Speech-head benchmark: AR steps/s, vocoder real-time factor, first-audio delay, concurrent sessions.

Runs on CPU (and on CUDA when present) at the tiny size (the project's test checkpoint) and at the
released size (VITA-1.5 decoder 896/4864/4+2 layers, TiCodec 512 channels) with random weights, which
time the same as trained ones. Writes ``docs/bench/bench_speech.json`` and ``docs/bench/bench_speech.png``.

    .venv/bin/python -m bench.bench_speech [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.speech.batching import StepBatcher
from engine.speech.codec import Codec
from engine.speech.config import CodecConfig, DecoderConfig
from engine.speech.decoder import DecodeState, SpeechDecoder
from engine.speech.sampler import CodeSampler, undecodable_mask
from engine.speech.streaming import ReferenceChunker, StreamingVocoder
from engine.speech.tiny_checkpoint import write_tts_checkpoint

StepFn = Callable[[DecodeState, int], torch.Tensor]
OUT = Path(__file__).resolve().parent.parent / "docs" / "bench"
MS_PER_CODE = 25.0
FULL_DECODER = DecoderConfig(
    idim=896, odim=1024, hidden=896, intermediate=4864, num_blocks=4, num_heads=14, output_dim=896,
    prefix_layers=True,
)
FULL_CODEC = CodecConfig(
    upsample_rates=(8, 5, 5, 3), upsample_kernel_sizes=(16, 11, 11, 5), upsample_initial_channel=512,
    resblock_kernel_sizes=(3, 7, 11), resblock_dilation_sizes=((1, 3, 5),) * 3, n_codes=1024,
    global_tokens=(473, 975, 419, 219, 565, 121, 550, 616),
)


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _no_eos_sampler(cfg: DecoderConfig, seed: int) -> CodeSampler:
    mask = undecodable_mask(cfg, cfg.odim)
    mask[cfg.eos] = True  # timing runs must not stop early
    return CodeSampler(2, mask, seed)


def _ar_run(decoder: SpeechDecoder, tokens: int, steps: int, seed: int = 0, step: StepFn | None = None) -> None:
    cfg = decoder.cfg
    cond = torch.randn(4 * tokens, cfg.idim)
    state = decoder.start(cond, steps)
    sampler, token, step = _no_eos_sampler(cfg, seed), cfg.sos, step or decoder.step
    for _ in range(steps):
        token = sampler.sample(step(state, token))


def ar_steps_per_second(decoder: SpeechDecoder, steps: int, repeats: int) -> dict[str, float]:
    """Median AR steps/s (prefix of 20 tokens excluded) and the prefix time itself."""
    cond = torch.randn(80, decoder.cfg.idim)
    prefix_s = _median_time(lambda: decoder.start(cond, steps), repeats)
    total_s = _median_time(lambda: _ar_run(decoder, 20, steps), repeats)
    return {"steps_per_s": steps / max(total_s - prefix_s, 1e-9), "prefix_ms": 1e3 * prefix_s}


def vocoder_rtf(codec: Codec, codes: int, repeats: int) -> dict[str, float]:
    """Real-time factor (compute / audio seconds) of whole decoding and of the streaming vocoder."""
    seq = np.random.default_rng(0).integers(0, 1024, codes).tolist()
    audio_s = codes * MS_PER_CODE / 1e3
    whole = _median_time(lambda: codec.decode(seq), repeats)

    def streamed() -> None:
        v = StreamingVocoder(codec.decode, codec.samples_per_code)
        for c in seq:
            v.push(c)
        v.finish()

    return {"whole_rtf": whole / audio_s, "streaming_rtf": _median_time(streamed, repeats) / audio_s}


def first_audio(decoder: SpeechDecoder, codec: Codec, mode: str, repeats: int) -> dict[str, float]:
    """Codes and wall-clock ms from the start of a clause (10 tokens) to its first audio segment."""

    def once() -> tuple[int, float]:
        cfg = decoder.cfg
        t0 = time.perf_counter()
        state = decoder.start(torch.randn(40, cfg.idim), 200)
        if mode == "fast":
            chunker = StreamingVocoder(codec.decode, codec.samples_per_code)
        else:  # the demo's first sentence: chunk 20 + look-ahead 10, threshold 0.1 (∞ here: always emit)
            chunker = ReferenceChunker(codec.decode, codec.samples_per_code, 20, 10, float("inf"))
        sampler, token, n = _no_eos_sampler(cfg, 1), cfg.sos, 0
        while True:
            token = sampler.sample(decoder.step(state, token))
            n += 1
            if chunker.push(token):
                return n, 1e3 * (time.perf_counter() - t0)

    once()
    runs = [once() for _ in range(repeats)]
    return {"codes": runs[0][0], "speech_ms": runs[0][0] * MS_PER_CODE, "compute_ms": statistics.median(r[1] for r in runs)}


def concurrent_sessions(decoder: SpeechDecoder, sessions: int, steps: int, mode: str) -> float:
    """Aggregate AR steps/s with ``sessions`` threads, each with its own cache and sampler.

    ``batched``: steps combined by :class:`StepBatcher` (the default); ``no_lock``: each session steps
    on its own; ``one_lock``: a global lock around each session's whole decode (the demo's model).
    """
    lock, batcher = threading.Lock(), StepBatcher(decoder)

    def run(i: int) -> None:
        if mode == "one_lock":
            with lock:
                _ar_run(decoder, 10, steps, seed=i)
        else:
            _ar_run(decoder, 10, steps, seed=i, step=batcher.step if mode == "batched" else None)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sessions * steps / (time.perf_counter() - t0)


def _plot(results: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    sizes = [s for s in ("tiny", "full") if s in results["ar"]]
    axes[0].bar(sizes, [results["ar"][s]["steps_per_s"] for s in sizes], color="tab:blue")
    axes[0].axhline(40, color="red", ls="--", label="real time (40 codes/s)")
    axes[0].set_title("AR steps/s (one session)")
    axes[0].legend()
    x = np.arange(len(sizes))
    axes[1].bar(x - 0.2, [results["vocoder"][s]["whole_rtf"] for s in sizes], 0.4, label="whole")
    axes[1].bar(x + 0.2, [results["vocoder"][s]["streaming_rtf"] for s in sizes], 0.4, label="streaming")
    axes[1].set_xticks(x, sizes)
    axes[1].axhline(1, color="red", ls="--")
    axes[1].set_title("vocoder real-time factor (lower is better)")
    axes[1].legend()
    fa = results["first_audio_full"]
    labels = ["project (fast)", "reference 1st sentence"]
    speech = [fa["fast"]["speech_ms"], fa["reference"]["speech_ms"]]
    compute = [fa["fast"]["compute_ms"], fa["reference"]["compute_ms"]]
    axes[2].bar(labels, compute, color="tab:green", label="compute (full size, CPU)")
    axes[2].scatter(labels, speech, color="black", zorder=3, label="speech generated before first audio")
    axes[2].set_title(f"first audio: {fa['fast']['codes']} vs {fa['reference']['codes']} codes")
    axes[2].set_ylabel("ms")
    axes[2].legend(fontsize=8)
    conc = results["concurrency_full"]
    n = [int(k) for k in conc["no_lock"]]
    axes[3].plot(n, list(conc["batched"].values()), "o-", label="batched steps (chosen)")
    axes[3].plot(n, list(conc["no_lock"].values()), "^-", label="per-session, no lock")
    axes[3].plot(n, list(conc["one_lock"].values()), "s--", label="one global lock")
    axes[3].set_xlabel("concurrent sessions")
    axes[3].set_title("aggregate AR steps/s (full size)")
    axes[3].legend()
    fig.suptitle(f"speech head on {results['device']} ({results['threads']} torch threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark and write JSON + PNG; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (1: a step's small ops stall in thread-parallel regions on a busy CPU)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 3
    device = torch.device(args.device)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        write_tts_checkpoint(Path(tmp), seed=0, llm_hidden_size=64)
        tiny_dec, _ = SpeechDecoder.from_files(Path(tmp) / "decoder")
        tiny_codec, _ = Codec.from_files(Path(tmp) / "codec")
    full_dec, full_codec = SpeechDecoder(FULL_DECODER), Codec(FULL_CODEC)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for model in (tiny_dec, full_dec):
        model.to(device, dtype)
    for model in (tiny_codec, full_codec):
        model.to(device)

    results: dict[str, object] = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "platform": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "command": "python -m bench.bench_speech" + (" --quick" if args.quick else "") + f" --threads {args.threads}",
        "decoder_dtype": str(dtype),
        "ar": {
            "tiny": ar_steps_per_second(tiny_dec, 200, repeats),
            "full": ar_steps_per_second(full_dec, 100, repeats),
        },
        "vocoder": {
            "tiny": vocoder_rtf(tiny_codec, 160, repeats),
            "full": vocoder_rtf(full_codec, 80, repeats),
        },
        "first_audio_full": {
            "fast": first_audio(full_dec, full_codec, "fast", repeats),
            "reference": first_audio(full_dec, full_codec, "reference", repeats),
        },
        "concurrency_full": {
            mode: {str(n): concurrent_sessions(full_dec, n, 60, mode) for n in (1, 2, 4, 8)}
            for mode in ("batched", "no_lock", "one_lock")
        },
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_speech.json").write_text(json.dumps(results, indent=2))
    _plot(results, OUT / "bench_speech.png")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
