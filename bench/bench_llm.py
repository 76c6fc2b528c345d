"""Benchmark of the VITA-1.5 LLM layer (``python -m bench.bench_llm [--device cuda] [--skip-engine]``).

* vLLM on the tiny checkpoint (CPU build here): engine start time, time to first token, decode tokens/s
  (text turn and image + audio turn);
* the full-size towers in plain torch (random weights, real geometry): InternViT-300M + projector on one
  448² tile, whale encoder + adapter on a 3 s and a 10 s clip.

Writes ``docs/bench/bench_llm.json`` and ``docs/bench/bench_llm.png``. Medians over repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "docs" / "bench"


def _tower_timings(device: str, repeats: int) -> dict[str, dict[str, float]]:
    from engine.llm.shipped_config import AUDIO_CONFIG, VISION_CONFIG
    from vllm_patches.audio_tower import AudioPath
    from vllm_patches.geometry import AudioGeometry, VisionGeometry
    from vllm_patches.vision_tower import VisionPath

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    results: dict[str, dict[str, float]] = {}

    def timed(name: str, fn) -> None:
        with torch.inference_mode():
            fn()  # warm-up
            samples = []
            for _ in range(repeats):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                fn()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                samples.append(time.perf_counter() - start)
        results[name] = {"median_ms": 1000 * statistics.median(samples), "min_ms": 1000 * min(samples),
                         "repeats": repeats}
        print(f"  {name}: median {results[name]['median_ms']:.1f} ms", flush=True)

    with torch.device(device):
        vision = VisionPath(VisionGeometry.from_config(VISION_CONFIG), 3584).to(dtype).eval()
    tile = torch.randn(1, 3, 448, 448, device=device, dtype=dtype)
    timed("vision_1_tile", lambda v=vision: v(tile))
    del vision
    gc.collect()
    with torch.device(device):
        audio = AudioPath(AudioGeometry.from_config(AUDIO_CONFIG), 3584).to(dtype).eval()
    for seconds in (3, 10):
        frames = 1 + (seconds * 16000 - 400) // 160
        feats = torch.randn(frames, 80, device=device, dtype=dtype)
        timed(f"audio_{seconds}s", lambda f=feats: audio.embed_clips([f]))
    return results


async def _engine_timings(repeats: int) -> dict[str, object]:
    from engine.llm.engine import Finished, LlmPool
    from engine.llm.options import LlmOptions
    from engine.llm.prompt import UserTurn
    from engine.tiny_checkpoint import write_tiny_checkpoint

    folder = write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="bench-tiny-")), seed=0)
    options = LlmOptions(model_path=folder, num_engines=2, dtype="float32", enforce_eager=True, max_model_len=2048,
                         kv_cache_mb=64, max_new_tokens=128)
    pool = LlmPool(options)
    try:
        builder = pool.prompt_builder()
        from PIL import Image

        def turn(kind: str, i: int) -> UserTurn:
            # Fresh content per repeat: prefix/multimodal caches must not turn a prefill into a lookup.
            if kind == "text":
                return UserTurn(text=f"Hello number {i}, what do you see?")
            t = np.arange(48000) / 16000
            audio = (0.3 * np.sin(2 * np.pi * (200 + 37 * i) * t)).astype(np.float32)
            return UserTurn(audio=audio, images=(Image.new("RGB", (640, 480), (90, 20 + 7 * i, 200)),))

        out: dict[str, object] = {"engine_start_s": [round(e.start_seconds, 2) for e in pool.engines]}
        for name in ("text", "image_audio"):
            ttft, rate = [], []
            for i in range(repeats):
                prompt = builder.build(turn(name, i))
                async for event in pool.stream(prompt, f"{name}-{i}", ignore_eos=True):
                    if isinstance(event, Finished):
                        ttft.append(event.time_to_first_token)
                        rate.append(event.decode_tokens_per_s)
            out[name] = {"prompt_tokens": prompt.expanded_length, "ttft_ms_median": 1000 * statistics.median(ttft),
                         "decode_tokens_per_s_median": statistics.median(rate), "repeats": repeats,
                         "new_tokens": options.max_new_tokens}
            print(f"  {name}: {out[name]}", flush=True)
        return out
    finally:
        pool.close()
        shutil.rmtree(folder, ignore_errors=True)


def _plot(data: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    towers = data["towers"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for device, timings in towers.items():
        names = list(timings)
        axes[0].bar([f"{n}\n{device}" for n in names], [timings[n]["median_ms"] for n in names])
    axes[0].set_ylabel("ms (median)")
    axes[0].set_title("full-size towers, plain torch")
    engine = data.get("engine")
    if engine:
        names = [k for k in engine if isinstance(engine[k], dict)]
        axes[1].bar([f"{n}\nTTFT ms" for n in names], [engine[n]["ttft_ms_median"] for n in names], color="tab:orange")
        axes[1].bar([f"{n}\ndecode tok/s" for n in names], [engine[n]["decode_tokens_per_s_median"] for n in names],
                    color="tab:green")
        axes[1].set_title(f"tiny checkpoint on vLLM (start {engine['engine_start_s']} s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write JSON + PNG."""
    parser = argparse.ArgumentParser(description="VITA-1.5 LLM benchmark")
    parser.add_argument("--device", action="append", help="torch device(s) for the towers (default: cpu)")
    parser.add_argument("--skip-engine", action="store_true", help="only time the towers (e.g. on a GPU box)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    data: dict[str, object] = {"machine": platform.platform(), "cpu_threads": torch.get_num_threads(),
                               "torch": torch.__version__, "towers": {}}
    for device in args.device or ["cpu"]:
        print(f"towers on {device}", flush=True)
        label = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
        data["towers"][f"{device} ({label})"] = _tower_timings(device, args.repeats)
    if not args.skip_engine:
        print("vLLM engines on the tiny checkpoint", flush=True)
        data["engine"] = asyncio.run(_engine_timings(args.repeats))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_llm.json").write_text(json.dumps(data, indent=2))
    _plot(data, args.out / "bench_llm.png")
    print(f"wrote {args.out / 'bench_llm.json'}")


if __name__ == "__main__":
    main()
