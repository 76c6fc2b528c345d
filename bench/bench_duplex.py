"""Full-duplex benchmark: N simulated users (1, 2, 4, 8) talking to the real engine on a generated checkpoint.

Each user is a real Socket.IO client streaming fixtures in real time: a question (question_en), and
while its answer plays, an interruption (part of question_zh). Measured on the client's clock:

* **speech end → first audio**: from sending the last packet of real speech (the fixture's labelled
  end) to receiving the answer's first ``reply_audio``; this includes the VAD's end-of-turn silence;
* **turn end → first audio**: from receiving the ``vad`` ``speech_end`` event (the end-of-turn decision)
  to the same first ``reply_audio``: what the engine and speech head add, the silence tail excluded;
* **barge-in → silence**: from sending the first packet of the interrupting speech to receiving
  ``pause`` (the page stops playback on it);
* the server's own stage timings (``timings_ms``) for the same turns.

Every user count runs twice on the same engine: streaming (clauses spoken while the LLM generates) and the
reference way (whole answer first, then speech). The users run in a child process, as remote clients
would: in the server's process their Socket.IO work took the server's GIL (at 8 users, 1.2 of the 8.0 CPU
seconds that process spent in one conversation). The monitor's verdict is forced to ☞ so every utterance
is answered. Writes ``docs/bench/bench_duplex.json`` and ``.png``.

The checkpoint is ``7b-paced`` by default (:data:`engine.tiny_checkpoint.PACED_7B`): the tiny checkpoint's
LLM writes a whole answer in ~0.1 s, so streaming could not show what it buys with the real 7B model.
Random weights never pick EOS, so every answer is ``--max_new_tokens`` long (128: a few spoken sentences).
The run first measures what the checkpoint costs here (one stream's decode rate, the speech head's AR
steps/s and vocoder real-time factor) and records it beside the latencies.

    .venv/bin/python -m bench.bench_duplex [--users 1,2,4,8] [--rounds 2] [--sizes 7b-paced|tiny]

Flask and the server are imported inside ``main`` only: vLLM's spawned workers re-import this module.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.report import write_report

MIC = 16_000


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(values, q)), 1)


def _summary(values: list[float]) -> dict:
    return {"p50": _pct(values, 50), "p90": _pct(values, 90), "n": len(values)}


def _arrival(client, name: str) -> float:
    with client._cond:
        return next(t for t, (e, _) in zip(client.arrival, client.events, strict=True) if e == name)


def _one_user(url: str, question: np.ndarray, q_end_s: float, barge: np.ndarray, out: dict) -> None:
    """One user's conversation; fills ``out`` with its latencies (ms; None when it did not happen)."""
    from tests.fakes.listener import ListeningClient

    c = ListeningClient(url).connect()
    try:
        c.control(type="start")
        t0 = time.monotonic()
        c.talk(question)
        speech_end_at = t0 + q_end_s
        if c.wait_for(lambda c: c.named("reply_audio"), timeout=60):
            first = _arrival(c, "reply_audio")
            out["first_audio_ms"] = (first - speech_end_at) * 1000
            with c._cond:
                turn_end = next((t for t, (e, a) in zip(c.arrival, c.events, strict=True)
                                 if e == "vad" and a[0].get("type") == "speech_end"), None)
            if turn_end is not None:  # the end-of-turn decision: the VAD's silence tail excluded
                out["turn_end_to_first_audio_ms"] = (first - turn_end) * 1000
        if c.named("reply_end") and not c.named("reply_audio"):
            return
        t_barge = time.monotonic()
        c.talk(barge)
        if c.wait_for(lambda c: c.named("pause"), timeout=5):
            paused = _arrival(c, "pause")
            out["barge_in_ms"] = (paused - t_barge) * 1000
        if c.wait_for(lambda c: len(c.named("reply_start")) >= 2, timeout=30):
            out["answered_interruption"] = True
    finally:
        c.close()


def _users(url: str, users: int, question, q_end_s, barge, results) -> None:
    """Child process: ``users`` simultaneous conversations; their latencies go back on ``results``."""
    batch: list[dict] = [{} for _ in range(users)]
    threads = [threading.Thread(target=_one_user, args=(url, question, q_end_s, barge, batch[i]))
               for i in range(users)]
    for i, th in enumerate(threads):
        th.start()
        time.sleep(0.05 * (i > 0))  # users do not all start speaking in the same millisecond
    for th in threads:
        th.join()
    results.put(batch)


def _phase(url: str, users: int, rounds: int, question, q_end_s, barge) -> dict:
    mp = multiprocessing.get_context("spawn")  # never fork a process that runs server threads
    results: list[dict] = []
    for _ in range(rounds):
        queue = mp.Queue()
        child = mp.Process(target=_users, args=(url, users, question, q_end_s, barge, queue), daemon=True)
        child.start()
        results += queue.get(timeout=600)
        child.join(60)
    first = [r["first_audio_ms"] for r in results if "first_audio_ms" in r]
    after_turn = [r["turn_end_to_first_audio_ms"] for r in results if "turn_end_to_first_audio_ms" in r]
    barge_ms = [r["barge_in_ms"] for r in results if "barge_in_ms" in r]
    return {"users": users, "speech_end_to_first_audio_ms": _summary(first),
            "turn_end_to_first_audio_ms": _summary(after_turn),
            "barge_in_to_pause_ms": _summary(barge_ms), "conversations": len(results),
            "interruptions_answered": sum(bool(r.get("answered_interruption")) for r in results)}


def _checkpoint_costs(engine, repeats: int = 3) -> dict:
    """One stream's LLM decode rate and time to first token, and the speech head's speed, on this machine."""
    import statistics

    from bench.bench_speech import MS_PER_CODE, ar_steps_per_second, vocoder_rtf
    from engine.llm.engine import Finished
    from engine.llm.prompt import UserTurn

    async def decode() -> tuple[list[float], list[float]]:
        rates, ttft = [], []
        for i in range(repeats):
            prompt = engine.builder.build(UserTurn(text=f"Question {i}: what can you tell me about the sea?"))
            async for event in engine.pool.stream(prompt, f"cost-{i}", ignore_eos=True):
                if isinstance(event, Finished):
                    rates.append(event.decode_tokens_per_s)
                    ttft.append(1000 * event.time_to_first_token)
        return rates, ttft

    rates, ttft = engine.loop.submit(decode()).result()
    ar = ar_steps_per_second(engine.head.decoder, 100, repeats)
    vocoder = vocoder_rtf(engine.head.codec, 80, repeats)
    return {"llm_decode_tokens_per_s": round(statistics.median(rates), 1),
            "llm_ms_per_token": round(1000 / statistics.median(rates), 1),
            "llm_ttft_ms": round(statistics.median(ttft), 1),
            "speech_ar_steps_per_s": round(ar["steps_per_s"], 1),
            "speech_head_rtf": round(1000 / MS_PER_CODE / ar["steps_per_s"] + vocoder["streaming_rtf"], 3),
            "note": "one stream at a time, no other load from this bench; the speech head's real-time factor is "
                    "AR time per code over the code's audio plus the streaming vocoder's RTF (< 1: faster "
                    "than real time)"}


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, style in (("streaming", "-o"), ("whole_answer_first", "--s")):
        rows = result[mode]
        n = [r["users"] for r in rows]
        for q in ("p50", "p90"):
            a.plot(n, [r["speech_end_to_first_audio_ms"][q] for r in rows], style, label=f"{mode} {q}")
        a.plot(n, [r["turn_end_to_first_audio_ms"]["p50"] for r in rows], style, alpha=0.4,
               label=f"{mode} p50 after the turn-end decision")
    a.set(xlabel="simultaneous users", ylabel="ms", title="speech end → first audio (client)")
    a.set_xticks(result["users"], [str(u) for u in result["users"]])
    a.legend(fontsize=8)
    rows = result["streaming"]
    for q in ("p50", "p90"):
        b.plot([r["users"] for r in rows], [r["barge_in_to_pause_ms"][q] for r in rows], "-o", label=q)
    b.axhline(250, color="red", lw=0.8, label="250 ms goal")
    b.set(xlabel="simultaneous users", ylabel="ms", title="barge-in speech onset → pause received")
    b.set_xticks(result["users"], [str(u) for u in result["users"]])
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its JSON and plot."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", default="1,2,4,8", help="comma-separated user counts")
    ap.add_argument("--rounds", type=int, default=2, help="conversations per user and setting")
    ap.add_argument("--sizes", default="7b-paced", help="checkpoint geometry: 7b-paced (realistic LLM speed) or tiny")
    ap.add_argument("--max_new_tokens", type=int, default=128, help="answer length (random weights never stop early)")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.users.split(",")]

    from engine.duplex.engine import VitaEngine
    from engine.duplex.options import DuplexOptions
    from engine.llm.options import LlmOptions
    from engine.llm.prompt import SPOKEN
    from engine.tiny_checkpoint import SIZES, write_tiny_checkpoint
    from server.options import ServerOptions
    from tests.fakes.harness import RunningServer, load_wav, manifest

    ckpt = write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="bench-duplex-")), seed=0, sizes=SIZES[args.sizes])
    llm = LlmOptions(model_path=ckpt, num_engines=2, dtype="float32", enforce_eager=True, max_model_len=2048,
                     kv_cache_mb=512, max_new_tokens=args.max_new_tokens)
    base = DuplexOptions(max_frames=0)
    started = time.perf_counter()
    engine = VitaEngine(llm, base, judge_states=(SPOKEN,))
    start_s = time.perf_counter() - started
    m = manifest()
    silence = np.zeros(MIC, np.int16)
    question = np.concatenate([load_wav("question_en"), silence])
    q_end_s = m["question_en"]["speech"][0]["end"]
    zh = m["question_zh"]["speech"][0]
    barge = np.concatenate([load_wav("question_zh")[int(zh["start"] * MIC) : int((zh["start"] + 2.0) * MIC)], silence])
    result: dict = {"users": counts, "engine_start_s": round(start_s, 1), "sizes": args.sizes,
                    "max_new_tokens": args.max_new_tokens}
    try:
        result["checkpoint_costs"] = _checkpoint_costs(engine)
        print("costs", json.dumps(result["checkpoint_costs"]), flush=True)
        with RunningServer(ServerOptions(no_tls=True, max_users=max(counts)), engine) as srv:
            for mode, streaming in (("streaming", True), ("whole_answer_first", False)):
                engine.options = replace(base, streaming=streaming)  # new sessions pick it up
                result[mode] = []
                for n in counts:
                    row = _phase(srv.url, n, args.rounds, question, q_end_s, barge)
                    print(mode, json.dumps(row), flush=True)
                    result[mode].append(row)
    finally:
        engine.close()
    result["ratio_whole_over_streaming_p50_after_turn_end"] = {
        str(s["users"]): (round(w["turn_end_to_first_audio_ms"]["p50"] / s["turn_end_to_first_audio_ms"]["p50"], 2)
                          if s["turn_end_to_first_audio_ms"]["p50"] and w["turn_end_to_first_audio_ms"]["p50"]
                          else None)
        for s, w in zip(result["streaming"], result["whole_answer_first"], strict=True)
    }
    result["ratio_whole_over_streaming_p50"] = {
        str(s["users"]): (round(w["speech_end_to_first_audio_ms"]["p50"] / s["speech_end_to_first_audio_ms"]["p50"], 2)
                          if s["speech_end_to_first_audio_ms"]["p50"] and w["speech_end_to_first_audio_ms"]["p50"]
                          else None)
        for s, w in zip(result["streaming"], result["whole_answer_first"], strict=True)
    }
    result["machine"] = {"cpu_count": __import__("os").cpu_count(), "python": platform.python_version(),
                         "note": f"{args.sizes} random checkpoint on CPU; both vLLM engines and the speech head "
                                 "share the cores"}
    write_report("bench_duplex", result, _plot)
    return result


if __name__ == "__main__":
    main()
