"""Front-end benchmark: VAD cost, VAD streams per core, socket round trip, browser barge-in latency.

* VAD cost per 512-sample window (one shared onnxruntime session, 1 thread);
* how many live mic streams one core sustains (N segmenters fed 20 ms packets in one thread);
* Socket.IO round trip (acknowledged ``ping`` control) over ws:// and wss://, TCP_NODELAY on;
* in headless Chromium (fake mic: two_turns.wav): from the onset of the interrupting speech to the
  moment the page's player dropped the reply audio (``interrupt`` -> worklet flush).

The engine is the scripted fake from tests/fakes (the front end is measured up to the engine boundary).
Writes ``docs/bench/bench_frontend.json`` and ``docs/bench/bench_frontend.png``.

    .venv/bin/python -m bench.bench_frontend [--quick] [--no-browser]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import write_report
from server.options import ServerOptions
from server.tls import make_self_signed, server_context
from tests.fakes.fake_engine import FakeEngine, Script
from tests.fakes.harness import SPEECH_DIR, RecordingClient, RunningServer, load_wav, manifest
from vad.options import WINDOW
from vad.segmenter import UtteranceSegmenter
from vad.silero import shared_model

WINDOW_S = WINDOW / 16000


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def vad_window_cost(n_windows: int) -> dict:
    """Microseconds per Silero window on real speech."""
    stream = shared_model().stream()
    audio = load_wav("question_en").astype(np.float32) / 32768
    windows = [audio[i : i + WINDOW] for i in range(0, audio.size - WINDOW, WINDOW)]
    for w in windows[:20]:
        stream.probability(w)  # warm-up
    times = []
    for i in range(n_windows):
        t0 = time.perf_counter()
        stream.probability(windows[i % len(windows)])
        times.append((time.perf_counter() - t0) * 1e6)
    median = statistics.median(times)
    return {"windows": n_windows, "median_us": median, "p99_us": _pct(times, 99),
            "real_time_factor": median / 1e6 / WINDOW_S}


def vad_streams_per_core(counts: list[int], seconds: float) -> dict:
    """Feed N segmenters in one thread and measure CPU time per second of audio."""
    audio = load_wav("two_turns")
    packet = 320
    n_packets = int(seconds * 16000 / packet)
    rows = []
    for n in counts:
        segs = [UtteranceSegmenter() for _ in range(n)]
        t0 = time.thread_time()
        for p in range(n_packets):
            off = (p * packet) % (audio.size - packet)
            for seg in segs:
                seg.push(audio[off : off + packet])
        cpu = time.thread_time() - t0
        rows.append({"streams": n, "audio_s_each": seconds, "cpu_s": cpu, "load": cpu / seconds})
    per_stream = statistics.median(r["cpu_s"] / (r["streams"] * seconds) for r in rows)
    return {"rows": rows, "cpu_s_per_stream_second": per_stream, "streams_per_core": int(1 / per_stream)}


def socket_round_trip(n: int) -> dict:
    """Median/p95 ms of an acknowledged control event, plain and over TLS."""
    out = {}
    tmp = Path(tempfile.mkdtemp(prefix="vita-bench-tls-"))
    cert, key = make_self_signed(tmp, ["127.0.0.1", "localhost"])
    for scheme, ctx in (("ws", None), ("wss", server_context(cert, key))):
        srv = RunningServer(ServerOptions(no_tls=ctx is None, limits=_fast_limits()), FakeEngine(), ssl_context=ctx)
        try:
            rtts = _ping_times(srv, n, cert if ctx else None)
        finally:
            srv.stop()
        out[scheme] = {"n": n, "median_ms": statistics.median(rtts), "p95_ms": _pct(rtts, 95)}
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def _fast_limits():
    from server.options import LimitOptions

    return LimitOptions(max_control_per_s=10_000)


def _ping_times(srv: RunningServer, n: int, cert: Path | None) -> list[float]:
    if cert is None:
        c = RecordingClient(srv.url).connect()
        try:
            c.control(type="ping")
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                c.control(type="ping")
                times.append((time.perf_counter() - t0) * 1000)
            return times
        finally:
            c.close()
    return _ping_times_tls(srv.url, n, cert)


def _ping_times_tls(url: str, n: int, cert: Path) -> list[float]:
    # The sync client is unreliable over wss (websocket-client shares one SSL socket between threads).
    import asyncio
    import ssl

    import socketio

    async def run() -> list[float]:
        client = socketio.AsyncClient(reconnection=False,
                                      websocket_extra_options={"ssl": ssl.create_default_context(cafile=str(cert))})
        await client.connect(url, transports=["websocket"], wait_timeout=10)
        await client.call("control", {"type": "ping"})
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            await client.call("control", {"type": "ping"})
            times.append((time.perf_counter() - t0) * 1000)
        await client.disconnect()
        return times

    return asyncio.run(run())


def browser_barge_in(runs: int) -> dict:
    """Speech onset (in the fake mic file) -> the page's player silenced, in Chromium."""
    from playwright.sync_api import sync_playwright

    onset_s = manifest()["two_turns"]["speech"][1]["start"]
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    tmp = Path(tempfile.mkdtemp(prefix="vita-bench-tls-"))
    ctx = server_context(*make_self_signed(tmp, ["127.0.0.1", "localhost"]))
    rows = []
    with sync_playwright() as p:
        for _ in range(runs):
            srv = RunningServer(ServerOptions(), FakeEngine(Script(reply_seconds=6.0)), ssl_context=ctx)
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
                f"--use-file-for-fake-audio-capture={SPEECH_DIR / 'two_turns.wav'}%noloop",
            ])
            try:
                page = browser.new_context(ignore_https_errors=True).new_page()
                page.goto(srv.url + "/")
                page.wait_for_function("() => vita.stats.connected && vita.hello", timeout=10_000)
                page.click("#start")
                page.wait_for_function("() => vita.stats.flushed.length >= 1", timeout=30_000)
                st = page.evaluate("vita.stats")
            finally:
                browser.close()
                srv.stop()
            # The first packet holds file samples 0..320, so file time t plays at firstPacketAt - 20 ms + t.
            # "Onset" is where the VAD located the interrupting speech in the mic stream (Chromium's echo
            # cancellation / noise suppression move it a little from the file's ground truth, also given).
            t0 = st["firstPacketAt"] - 20
            start_evt = [v for v in st["vad"] if v["type"] == "speech_start"][1]
            onset = t0 + start_evt["start_ms"]
            rows.append({
                "onset_to_silenced_ms": st["flushed"][0]["at"] - onset,
                "onset_to_interrupt_event_ms": st["interrupts"][0]["at"] - onset,
                "vad_decision_audio_ms": start_evt["at_ms"] - start_evt["start_ms"],
                "truth_onset_to_silenced_ms": st["flushed"][0]["at"] - (t0 + onset_s * 1000),
                "turn_end_to_reply_audio_ms": st["latencies"][0] if st["latencies"] else None,
            })
    shutil.rmtree(tmp, ignore_errors=True)
    keys = rows[0].keys()
    return {"runs": rows, **{f"median_{k}": statistics.median(r[k] for r in rows if r[k] is not None) for k in keys}}


def plot(result: dict, path: Path) -> None:
    """Four panels: VAD window cost, streams vs load, socket RTT, browser barge-in latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(17, 4))
    v = result["vad_window"]
    ax[0].bar(["median", "p99"], [v["median_us"], v["p99_us"]], color=["#2d6cdf", "#8bb0ef"])
    ax[0].set_yscale("log")  # the p99 is dominated by other processes on a shared machine
    ax[0].set_title(f"Silero window (32 ms audio) cost, µs\nRTF {v['real_time_factor']:.4f}")
    rows = result["vad_streams"]["rows"]
    ax[1].plot([r["streams"] for r in rows], [r["load"] * 100 for r in rows], "o-")
    ax[1].axhline(100, color="grey", ls="--")
    ax[1].set_xlabel("concurrent mic streams")
    ax[1].set_ylabel("% of one core")
    ax[1].set_title(f"VAD load; ~{result['vad_streams']['streams_per_core']} streams per core")
    rtt = result["socket_rtt"]
    ax[2].bar(list(rtt), [rtt[k]["median_ms"] for k in rtt], yerr=[[0] * len(rtt),
              [rtt[k]["p95_ms"] - rtt[k]["median_ms"] for k in rtt]], color="#2e9d5b")
    ax[2].set_title("Socket.IO ack round trip, ms (median, p95)")
    b = result.get("browser")
    if b:
        keys = ["vad_decision_audio_ms", "onset_to_interrupt_event_ms", "onset_to_silenced_ms"]
        ax[3].bar(["VAD decides\n(audio time)", "interrupt\nin page", "player\nsilenced"],
                  [b[f"median_{k}"] for k in keys], color="#c98a1b")
        ax[3].set_title("Chromium: onset -> reply silenced, ms")
    else:
        ax[3].set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its JSON and PNG."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--no-browser", action="store_true", help="skip the Chromium measurement")
    a = ap.parse_args(argv)
    quick = a.quick
    result: dict = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                "python": platform.python_version()}}
    result["vad_window"] = vad_window_cost(500 if quick else 5000)
    result["vad_streams"] = vad_streams_per_core([1, 8, 32] if quick else [1, 8, 32, 64], 2.0 if quick else 5.0)
    result["socket_rtt"] = socket_round_trip(50 if quick else 300)
    if not a.no_browser and Path(shutil.which("chromium") or "/usr/bin/chromium").exists():
        result["browser"] = browser_barge_in(1 if quick else 5)
    write_report("bench_frontend", result, plot)
    return result


if __name__ == "__main__":
    main()
