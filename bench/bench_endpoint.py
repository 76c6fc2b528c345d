"""Endpoint accuracy (issue 12 item 4): true end of speech → the VAD's ``speech_end`` decision, per fixture.

The speech fixtures (``tests/fixtures/speech``) carry their true speech spans. Each is fed to the real
segmenter (Silero ONNX + the level refinement) in 20 ms packets, as the server does. Per turn: the decision's
delay after the true end, minus the configured silence tail (``--end_silence_ms``); the goal is at most 40 ms.
The segmenter decides on 32 ms windows, so a delay is the tail rounded up to the next window boundary plus
what the detector itself adds. Writes ``docs/bench/bench_endpoint.json`` and ``.png``.

    .venv/bin/python -m bench.bench_endpoint
"""

from __future__ import annotations

import argparse
import platform

import numpy as np

from bench.report import write_report
from tests.fakes.harness import load_wav, manifest, true_turns
from vad.options import SAMPLE_RATE, VadOptions
from vad.segmenter import SpeechEnded, UtteranceSegmenter

GOAL_MS = 40.0
PACKET = 320  # 20 ms, the page's packet size


def measure(options: VadOptions | None = None) -> dict[str, list[float]]:
    """Per speech fixture: decision delay after the true end minus the tail (ms), one per turn."""
    opts = options or VadOptions()
    tail_s = opts.end_silence_ms / 1000
    out: dict[str, list[float]] = {}
    for name, meta in sorted(manifest().items()):
        if not meta["speech"]:
            continue
        seg = UtteranceSegmenter(opts)
        pcm = np.concatenate([load_wav(name), np.zeros(SAMPLE_RATE, np.int16)])
        events = [e for off in range(0, pcm.size, PACKET) for e in seg.push(pcm[off : off + PACKET])]
        decided = [e.at_sample / SAMPLE_RATE for e in events if isinstance(e, SpeechEnded)]
        ends = [end for _, end in true_turns(meta["speech"], tail_s)]
        out[name] = [round((d - t - tail_s) * 1000, 1) for d, t in zip(decided, ends, strict=True)]
    return out


def _plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["per_fixture_ms"])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, n in enumerate(names):
        ax.scatter(result["per_fixture_ms"][n], [i] * len(result["per_fixture_ms"][n]), color="tab:blue")
    ax.axvline(GOAL_MS, color="red", lw=0.8, label=f"goal: tail + {GOAL_MS:.0f} ms")
    ax.axvline(32, color="gray", lw=0.8, ls="--", label="one 32 ms window")
    ax.set_yticks(range(len(names)), names)
    ax.set(xlabel=f"decision after true end − {result['tail_ms']} ms tail (ms)", title="endpoint accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its JSON and plot."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    opts = VadOptions()
    per = measure(opts)
    delays = [d for ds in per.values() for d in ds]
    result = {
        "tail_ms": opts.end_silence_ms,
        "goal_ms": GOAL_MS,
        "turns": len(delays),
        "after_tail_ms": {"min": min(delays), "median": float(np.median(delays)), "max": max(delays)},
        "per_fixture_ms": per,
        "machine": {"python": platform.python_version()},
    }
    write_report("bench_endpoint", result, _plot)
    return result


if __name__ == "__main__":
    main()
