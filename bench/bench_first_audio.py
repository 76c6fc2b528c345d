"""First sound: end of the user's turn → first reply audio at the client, stage by stage (1 user).

One real Socket.IO client talks to the real engine (tiny checkpoint, two vLLM engines, the monitor's
verdict narrowed to ☞ so every turn is answered but still judged by a real one-token request). Per turn,
on the client's clock: the ``vad`` ``speech_end`` event (the end-of-turn decision, which comes after the
silence tail) → the first ``reply_audio``; this figure excludes the tail. From the reply's ``timings_ms``
(the server's clock), every stage counted from the same decision: ``engine_judge`` (the monitor's verdict
token), ``engine_answer_first_token``, ``engine_first_clause`` (the speech head got its first clause),
``engine_first_code``, ``engine_first_audio`` (the first chunk left the speech head), ``first_audio`` (the
first chunk sent to the client). Two modes on the same engine, one after the other:

* ``answer_ahead``: the default; the turn goes to the engine once the user has paused for
  ``answer_ahead_ms`` and its output is held until the decision, so engine stages may be negative (done
  before the decision); ``answered_ahead`` is how long before the decision the work began;
* ``at_decision`` (``answer_ahead_ms`` 0): all work starts at the decision, as before.

Writes ``docs/bench/bench_first_audio.json`` and ``.png``.

    .venv/bin/python -m bench.bench_first_audio [--turns 12]

Flask and the server are imported inside ``main`` only: vLLM's spawned workers re-import this module.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import write_report

MIC = 16_000
ENGINE_STAGES = ("engine_judge", "engine_answer_first_token", "engine_first_clause", "engine_first_code",
                 "engine_first_audio")
"""Engine stages: its clock starts when it gets the turn (``answered_ahead`` ms before the decision)."""
STAGES = (*ENGINE_STAGES, "first_text", "first_audio")
MODES = ("answer_ahead", "at_decision")


def _p(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _turn(client, question: np.ndarray) -> dict[str, float] | None:
    """One spoken turn; the client-side figure and the reply's stage timings (ms), or None if unanswered."""
    seen = len(client.events)
    client.talk(question)

    def since(c) -> list:
        return c.events[seen:]

    def ended(c) -> bool:
        return any(e == "reply_end" for e, _ in since(c))

    if not client.wait_for(ended, timeout=60):
        return None
    with client._cond:
        events = list(zip(client.arrival[seen:], client.events[seen:], strict=True))
    end_at = next((t for t, (e, a) in events if e == "vad" and a[0].get("type") == "speech_end"), None)
    audio_at = next((t for t, (e, _) in events if e == "reply_audio"), None)
    reply_end = next(a[0] for _, (e, a) in events if e == "reply_end")
    if end_at is None or audio_at is None:
        return None
    timings = reply_end.get("timings_ms", {})
    ahead = float(timings.get("answered_ahead", 0.0))
    stages = {k: float(timings[k]) - (ahead if k in ENGINE_STAGES else 0.0) for k in STAGES if k in timings}
    return {"client_turn_end_to_first_audio": (audio_at - end_at) * 1000, "answered_ahead": ahead, **stages}


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(MODES), figsize=(12, 4), sharey=True)
    for ax, mode in zip(axes, MODES, strict=True):
        rows = result["modes"][mode]["stages_ms"]
        names = [n for n in rows if n != "answered_ahead"]
        p50 = [rows[n]["p50"] or 0 for n in names]
        ax.barh(names, p50, color="tab:blue", label="p50")
        ax.errorbar(p50, names, xerr=[[0] * len(names), [(rows[n]["p90"] or 0) - (rows[n]["p50"] or 0) for n in names]],
                    fmt="none", ecolor="black", capsize=3, label="to p90")
        ax.axvline(0, color="grey", lw=0.8)
        ax.axvline(150, color="red", lw=0.8, label="150 ms goal (client figure)")
        ax.set(xlabel="ms from the end-of-turn decision (negative: before it)",
               title=f"{mode}, 1 user, {result['modes'][mode]['turns']} turns")
        ax.legend(fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its JSON and plot."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=12, help="spoken turns (the first is a warm-up, not counted)")
    ap.add_argument("--max_new_tokens", type=int, default=64, help="reply length cap (the LLM decodes meanwhile)")
    args = ap.parse_args(argv)

    from engine.duplex.engine import VitaEngine
    from engine.duplex.options import DuplexOptions
    from engine.llm.options import LlmOptions
    from engine.llm.prompt import SPOKEN
    from engine.tiny_checkpoint import write_tiny_checkpoint
    from server.options import ServerOptions
    from tests.fakes.harness import RunningServer, load_wav
    from tests.fakes.listener import ListeningClient
    from vad.options import VadOptions

    ckpt = write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="bench-first-audio-")), seed=0)
    llm = LlmOptions(model_path=ckpt, num_engines=2, dtype="float32", enforce_eager=True, max_model_len=2048,
                     kv_cache_mb=256, max_new_tokens=args.max_new_tokens)
    engine = VitaEngine(llm, DuplexOptions(), judge_states=(SPOKEN,))
    question = np.concatenate([load_wav("question_en"), np.zeros(MIC, np.int16)])
    by_mode: dict[str, list[dict[str, float]]] = {}
    try:
        for mode in MODES:
            vad = VadOptions() if mode == "answer_ahead" else VadOptions(answer_ahead_ms=0)
            turns = by_mode[mode] = []
            with RunningServer(ServerOptions(no_tls=True, max_users=1, vad=vad), engine) as srv:
                client = ListeningClient(srv.url).connect()
                try:
                    client.control(type="start")
                    for i in range(args.turns):
                        got = _turn(client, question)
                        print(f"{mode} turn {i}: {got}", flush=True)
                        if got is not None and i > 0:
                            turns.append(got)
                        time.sleep(1.0)  # the client holds at most the pacer's lead after reply_end: let it play
                finally:
                    client.close()
    finally:
        engine.close()
    names = ("client_turn_end_to_first_audio", "answered_ahead", *STAGES)
    result = {
        "answer_ahead_ms": VadOptions().answer_ahead_ms,
        "end_silence_ms": VadOptions().end_silence_ms,
        "modes": {mode: {
            "turns": len(turns),
            "stages_ms": {n: {"p50": _p([t[n] for t in turns if n in t], 50),
                              "p90": _p([t[n] for t in turns if n in t], 90)} for n in names},
            "per_turn": turns,
        } for mode, turns in by_mode.items()},
        "goal": "client_turn_end_to_first_audio p50 <= 150 ms (1 user, tiny checkpoint, silence tail excluded)",
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "note": "tiny random checkpoint on CPU; both vLLM engines and the speech head share the cores"},
    }
    write_report("bench_first_audio", result, _plot)
    return result


if __name__ == "__main__":
    main()
