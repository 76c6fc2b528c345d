"""Interaction benchmark in the spirit of Full-Duplex-Bench: pauses, backchannels, side talk, smooth turn ends
and interruptions, spoken in real time to a running server; the timeline is recorded at the client.

Clips are made locally (``bench/interaction/clips.py``: espeak-ng voices and rates, sox noise beds at a set
SNR, reproducible from ``--seed``). One Socket.IO session per scenario (``bench/interaction/client.py``) streams
a noisy room with the clips in it, plays the reply like the page and reports playback. Per category
(``bench/interaction/timeline.py: CATEGORY_RULES`` defines each):

* **TOR** (take-over rate): did the system start talking — wanted after a smooth turn end and an
  interruption; an error in a pause or after a backchannel; for side talk an error with ``--awakening model``
  and the expected outcome with ``always``;
* **response latency**: end of user speech (client clock, when its last packet went out) → first reply audio
  arriving at the client;
* **stop latency**: interruption (or backchannel) onset → the client's player goes silent (``pause`` or
  ``interrupt`` arrival; the player stops on arrival);
* **false interruptions** (backchannels that silenced the assistant) and **resumes** (it played on after).

Each ``--awakening`` mode gets its own server (``launch.py`` in a child process, tiny random checkpoint unless
``--model_path``), so the client's clock is not shared with the server's threads. Writes
``docs/bench/bench_interaction.json`` and ``.png`` (``--out`` elsewhere).

    .venv/bin/python -m bench.bench_interaction [--per-category 8] [--awakening always,model] [--quick]
    .venv/bin/python -m bench.bench_interaction --url http://127.0.0.1:8081 --awakening always  # a server you run
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.interaction.clips import CATEGORIES, Scenario, cache_dir, make_scenarios
from bench.interaction.timeline import CATEGORY_RULES, Event, Outcome, Trial, evaluate
from bench.report import OUT, write_report

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("tor", "response_latency_ms", "stop_latency_ms", "false_interruption_rate", "resume_rate")
MEANINGLESS_WITH_RANDOM_WEIGHTS = [
    *(f"model.{c}.tor" for c in CATEGORIES),
    "model.backchannel.resume_rate",
    "model.interruption.resume_rate",
    "model.*.judgements (state_token counts: the random monitor's verdicts)",
    "model.*.response_latency_ms: only which turns got answered (a random subset); the times themselves are real",
]
MEANINGFUL_WITH_RANDOM_WEIGHTS = [
    "*.response_latency_ms (VAD end of turn + engine + speech head + transport on this machine)",
    "*.stop_latency_ms (VAD speech start + pause event: before any verdict)",
    "*.pause.turn_cut_in_pause_rate and always.pause.tor (the VAD's end-of-turn silence)",
    "*.backchannel.false_interruption_rate (the pause comes at speech start, before the verdict)",
    "always.backchannel.tor and resume_rate (the too-short filter, not the model)",
    "always.side_talk.tor (1 wherever the VAD hears the voice: 'always' answers everything, by design)",
    "always.interruption.*",
]
NOTES = (
    "The default server runs a tiny RANDOM-weights checkpoint through real vLLM on CPU. Reply content is noise, "
    "and every reply is max_new_tokens (64) long, about 3 s of audio. With --awakening model the monitor's "
    "verdict (addressed or not, its first token) is sampled from random weights: every figure that depends on "
    "it (all TOR values in model mode, resumes in model mode, which turns get answered) says nothing about "
    "VITA-1.5. The timing figures ARE meaningful for this server: response latency (VAD end of turn + "
    "engine + speech head + transport on this machine), stop latency (VAD speech start + pause event), and "
    "the pause handling by the VAD (turn_cut_in_pause, TOR in always mode: 'always' answers every end of "
    "turn, so it measures only the VAD's --vad_end_silence_ms). In always mode, side-talk TOR is 1 by design "
    "and backchannel take-overs measure only the too-short filter (min utterance length). Backchannel and "
    "interruption trials need the assistant talking first: the lead request is spoken, and typed instead "
    "when the verdict dismisses it (lead_modes; with random weights in model mode that is every time)."
)
EXPECTED = {
    "pause": {"tor": "low", "turn_cut_in_pause_rate": "low"},
    "backchannel": {"tor": "low", "false_interruption_rate": "low", "resume_rate": "high"},
    "side_talk": {"tor": "low with model, 1 with always"},
    "smooth": {"tor": "1", "response_latency_ms": "low"},
    "interruption": {"tor": "1", "stop_latency_ms": "low", "resume_rate": "0"},
}


def _summary(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p90": None, "mean": None, "n": 0}
    return {"p50": round(float(np.percentile(values, 50)), 1), "p90": round(float(np.percentile(values, 90)), 1),
            "mean": round(float(np.mean(values)), 1), "n": len(values)}


def _rate(flags: list[bool | None]) -> dict:
    known = [bool(f) for f in flags if f is not None]
    return {"rate": round(sum(known) / len(known), 3) if known else None, "n": len(known)}


def aggregate(outcomes: list[Outcome], variants: dict[str, str] | None = None) -> dict:
    """Per-category figures over the valid trials (every metric key present; None where it does not apply).
    ``variants``: scenario name → side-talk variant."""
    variants = variants or {}
    out: dict = {}
    for cat in CATEGORIES:
        rows = [o for o in outcomes if o.category == cat]
        ok = [o for o in rows if o.valid]
        applies = CATEGORY_RULES[cat]
        fig: dict = {"trials": len(rows), "valid": len(ok),
                     "invalid": sorted({o.invalid_reason or "" for o in rows if not o.valid}),
                     "tor": _rate([o.took_over for o in ok])}
        fig["response_latency_ms"] = (_summary([o.response_latency_ms for o in ok if o.response_latency_ms is not None])
                                      if "response_latency_ms" in applies else None)
        fig["stop_latency_ms"] = (_summary([o.stop_latency_ms for o in ok if o.stop_latency_ms is not None])
                                  if "stop_latency_ms" in applies else None)
        fig["false_interruption_rate"] = (_rate([o.false_interruption for o in ok])
                                          if "false_interruption" in applies else None)
        fig["resume_rate"] = _rate([o.resumed for o in ok]) if "resumed" in applies else None
        if cat == "pause":
            fig["turn_cut_in_pause_rate"] = _rate([o.turn_cut_in_pause for o in ok])
        if cat == "side_talk":
            fig["tor_by_variant"] = {v: _rate([o.took_over for o in ok if variants.get(o.name) == v])
                                     for v in ("second_voice", "background")}
        if cat in ("backchannel", "interruption"):
            fig["stop_causes"] = {c: sum(o.stop_cause == c for o in ok) for c in ("pause", "interrupt", "reply_ended")}
        fig["trials_with_underruns"] = sum(o.underruns > 0 for o in ok)
        fig["judgements"] = {w: sum(w in o.judgements for o in ok) for w in sorted({j for o in ok for j in o.judgements})}
        fig["expected"] = EXPECTED[cat]
        out[cat] = fig
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LaunchedServer:
    """``launch.py`` in a child process on a free port, until ``/readyz`` answers 200."""

    def __init__(self, awakening: str, extra: list[str], log: Path, ready_s: float = 600.0) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, str(ROOT / "launch.py"), "--no_tls", "--port", str(self.port), "--awakening",
               awakening, "--max_users", "2", "--drain_s", "0", "--log_level", "WARNING", *extra]
        self._log = log.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        deadline = self.started + ready_s
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before it was ready; see {log}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server not ready after {ready_s:.0f} s; see {log}")
            time.sleep(1)
        self.start_s = round(time.monotonic() - self.started, 1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM (it drains for 0 s and exits), then kill after 60 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> LaunchedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _row(sc: Scenario, trial: Trial, load: float | None) -> dict:
    """One trial's JSON row: the scenario's facts and its outcome."""
    row = sc.describe() | evaluate(trial).as_dict() | {"send_lag_ms_max": trial.send_lag_ms_max, "load_avg_1m": load}
    if sc.lead is not None:
        row["lead_mode"] = trial.lead_mode
    return row


def _figures(rows: list[dict]) -> dict:
    """Per-category figures of one mode's rows, and the rows."""
    fields = Outcome.__dataclass_fields__
    outcomes = [Outcome(**{k: r[k] for k in fields}) for r in rows]
    variants = {r["name"]: r["variant"] for r in rows if r.get("variant")}
    figures = aggregate(outcomes, variants)
    for cat, fig in figures.items():
        modes = [r["lead_mode"] for r in rows if r["category"] == cat and r.get("lead_mode")]
        if modes:
            fig["lead_modes"] = {m: modes.count(m) for m in sorted(set(modes))}
    loads = [r["load_avg_1m"] for r in rows if r.get("load_avg_1m") is not None]
    return {"categories": figures, "load_avg_1m_median": round(float(np.median(loads)), 2) if loads else None,
            "trials": rows}


async def _run_trials(url: str, scenarios: list[Scenario], label: str, dump: Path | None) -> list[dict]:
    from bench.interaction.client import run_trial

    rows = []
    for sc in scenarios:
        trial = await run_trial(url, sc)
        if dump is not None:  # the raw timeline, to look into a figure afterwards (not in docs/: too long)
            with dump.open("a") as f:
                f.write(json.dumps({"mode": label, **dataclasses.asdict(trial)}, default=str) + "\n")
        row = _row(sc, trial, round(os.getloadavg()[0], 2))
        print(label, json.dumps({k: row[k] for k in ("name", "valid", "took_over", "response_latency_ms",
                                                     "stop_latency_ms", "false_interruption", "resumed")}),
              flush=True)
        rows.append(row)
    return rows


def run_mode(url: str, scenarios: list[Scenario], label: str, dump: Path | None = None) -> dict:
    """Every scenario against the server at ``url``: per-trial rows and per-category figures (raw timelines
    appended to ``dump`` as JSON lines)."""
    return _figures(asyncio.run(_run_trials(url, scenarios, label, dump)))


def reevaluate(report: Path, timelines: Path) -> dict:
    """``report`` (a bench_interaction.json) with every figure recomputed, under the current rules, from the
    timelines its run recorded; the run's own facts (server start, wall time, load) are kept."""
    result = json.loads(report.read_text())
    scenarios = {sc.name: sc for sc in make_scenarios(result["seed"], result["per_category"],
                                                      tuple(result["categories"]))}
    loads = {(m, r["name"]): r.get("load_avg_1m") for m, v in result["modes"].items() for r in v["trials"]}
    rows: dict[str, list[dict]] = {}
    for line in timelines.read_text().splitlines():
        d = json.loads(line)
        mode = d.pop("mode")
        d["events"] = [Event(**e) for e in d["events"]]
        trial = Trial(**d)
        rows.setdefault(mode, []).append(_row(scenarios[trial.name], trial, loads.get((mode, trial.name))))
    for mode, mode_rows in rows.items():
        result["modes"][mode].update(_figures(mode_rows))
    result.update(rules=CATEGORY_RULES, reevaluated_from=str(timelines))
    if result.get("random_weights"):
        result.update(notes=NOTES, meaningless_with_random_weights=MEANINGLESS_WITH_RANDOM_WEIGHTS,
                      meaningful_with_random_weights=MEANINGFUL_WITH_RANDOM_WEIGHTS)
    return result


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in result["awakening"] if m in result["modes"]]
    cats = list(CATEGORIES)
    x = np.arange(len(cats))
    w = 0.8 / max(len(modes), 1)
    random = result.get("random_weights", False)
    fig, axes = plt.subplots(2, 2, figsize=(14, 8.5))
    (a, b), (c, d) = axes
    rates = [("pause", "turn_cut_in_pause_rate", "pause: turn cut\nin the pause"),
             ("backchannel", "false_interruption_rate", "backchannel:\nfalse interruption"),
             ("backchannel", "resume_rate", "backchannel:\nresumed"),
             ("interruption", "resume_rate", "interruption:\nresumed (dismissed)")]
    stops = [("interruption", "stop_latency_ms"), ("backchannel", "stop_latency_ms")]

    def val(fig: dict | None, key: str) -> float:
        v = (fig or {}).get(key)
        return float("nan") if v is None else float(v)

    def na(ax, xs, ys) -> None:  # a missing figure is not a zero
        for xi, yi in zip(xs, ys, strict=True):
            if yi != yi:
                ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)

    for i, m in enumerate(modes):
        figs = result["modes"][m]["categories"]
        hatch = "//" if (random and m == "model") else None
        label = f"{m} (random verdicts)" if hatch else m
        tor = [val(figs[k]["tor"], "rate") for k in cats]
        a.bar(x + i * w, tor, w, label=label, hatch=hatch)
        na(a, x + i * w, tor)
        lat = [val(figs[k]["response_latency_ms"], "p50") for k in cats]
        b.bar(x + i * w, lat, w, label=f"{m} p50")
        na(b, x + i * w, lat)
        b.scatter(x + i * w, [val(figs[k]["response_latency_ms"], "p90") for k in cats], marker="_", s=200,
                  color="black", zorder=3, label="p90" if i == 0 else None)
        stop = [val(figs[k][f], "p50") for k, f in stops]
        c.bar(np.arange(len(stops)) + i * w, stop, w, label=f"{m} p50")
        na(c, np.arange(len(stops)) + i * w, stop)
        c.scatter(np.arange(len(stops)) + i * w, [val(figs[k][f], "p90") for k, f in stops], marker="_", s=200,
                  color="black", zorder=3, label="p90" if i == 0 else None)
        for j, (k, f, _) in enumerate(rates):  # only the resumes follow the verdict; a turn cut is the VAD's
            r = val(figs[k].get(f), "rate")
            d.bar(j + i * w, r, w, color=f"C{i}", hatch=hatch if f == "resume_rate" else None,
                  label=label if j == 0 else None)
            na(d, [j + i * w], [r])
    a.set(title="take-over rate (TOR) per category", ylabel="fraction of valid trials", ylim=(0, 1.3))
    a.set_xticks(x + w * (len(modes) - 1) / 2, cats, fontsize=8)
    a.legend(fontsize=8, title="--awakening", title_fontsize=8, ncols=2, loc="upper center")
    b.set(title="response latency: end of user speech → first reply audio (client)", ylabel="ms")
    b.set_xticks(x + w * (len(modes) - 1) / 2, cats, fontsize=8)
    b.legend(fontsize=8)
    c.set(title="stop latency: onset → client silent", ylabel="ms")
    c.set_xticks(np.arange(len(stops)) + w * (len(modes) - 1) / 2, [k for k, _ in stops], fontsize=8)
    c.legend(fontsize=8)
    d.set(title="turn cuts, false interruptions, resumes (hatched: the verdict's)",
          ylabel="fraction of valid trials", ylim=(0, 1.3))
    d.set_xticks(np.arange(len(rates)) + w * (len(modes) - 1) / 2, [t for _, _, t in rates], fontsize=8)
    d.legend(fontsize=8, ncols=2, loc="upper center")
    for ax, n in ((a, len(cats)), (b, len(cats)), (c, len(stops)), (d, len(rates))):
        ax.set_xlim(-0.6, n - 0.4 + w * (len(modes) - 1))  # NaN bars (n/a) do not widen the axes
    if random:
        fig.suptitle("interaction bench on RANDOM weights: what depends on the model's verdict (TOR and resumes "
                     "in model mode) is meaningless; the timings are real", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and write its JSON and plot."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="clip seed (same seed, same clips)")
    ap.add_argument("--per-category", type=int, default=8, help="scenarios per category")
    ap.add_argument("--quick", action="store_true", help="2 scenarios per category")
    ap.add_argument("--awakening", default="always,model", help="comma-separated: always, model")
    ap.add_argument("--categories", default=",".join(CATEGORIES))
    ap.add_argument("--url", default=None, help="use this running server (one --awakening: what it runs)")
    ap.add_argument("--model_path", default=None, help="for the launched servers (default: tiny random)")
    ap.add_argument("--num_engines", type=int, default=None,
                    help="for the launched servers (default: the server's own, 2)")
    ap.add_argument("--out", type=Path, default=OUT, help="folder for the JSON and PNG")
    ap.add_argument("--reevaluate", type=Path, default=None, metavar="TIMELINES",
                    help="run nothing: recompute the figures of --out's JSON from the timelines.jsonl its run "
                         "recorded (see machine.server_logs_and_timelines)")
    args = ap.parse_args(argv)
    if args.reevaluate is not None:
        result = reevaluate(args.out / "bench_interaction.json", args.reevaluate)
        write_report("bench_interaction", result, _plot, out=args.out)
        return result
    modes = [m.strip() for m in args.awakening.split(",") if m.strip()]
    if bad := [m for m in modes if m not in ("always", "model")]:
        ap.error(f"unknown --awakening {bad}")
    if args.url and len(modes) != 1:
        ap.error("--url takes one --awakening: the mode that server runs")
    per = 2 if args.quick else args.per_category
    cats = tuple(c for c in args.categories.split(",") if c)
    scenarios = make_scenarios(args.seed, per, cats)
    extra = ["--model_path", args.model_path] if args.model_path else []
    if args.num_engines is not None:
        extra += ["--num_engines", str(args.num_engines)]
    result: dict = {
        "seed": args.seed, "per_category": per, "awakening": modes, "categories": list(cats),
        "metrics": list(METRICS), "rules": CATEGORY_RULES,
        "random_weights": args.model_path is None,
        "meaningless_with_random_weights": MEANINGLESS_WITH_RANDOM_WEIGHTS if args.model_path is None else [],
        "meaningful_with_random_weights": MEANINGFUL_WITH_RANDOM_WEIGHTS if args.model_path is None else [],
        "notes": NOTES if args.model_path is None else "",
        "clip_cache": str(cache_dir()), "modes": {},
    }
    logs = Path(tempfile.mkdtemp(prefix="bench-interaction-"))
    for mode in modes:
        started = time.monotonic()
        load_before = round(os.getloadavg()[0], 2)
        if args.url:
            result["modes"][mode] = run_mode(args.url, scenarios, mode, logs / "timelines.jsonl")
        else:
            with LaunchedServer(mode, extra, logs / f"server-{mode}.log") as srv:
                result["modes"][mode] = run_mode(srv.url, scenarios, mode, logs / "timelines.jsonl")
                result["modes"][mode]["server_start_s"] = srv.start_s
        result["modes"][mode]["wall_s"] = round(time.monotonic() - started, 1)
        # other work on the machine inflates every latency here: keep the load next to the figures
        result["modes"][mode]["load_avg_1m_at_start"] = load_before
        result["modes"][mode]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    result["machine"] = {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                         "server_logs_and_timelines": str(logs),
                         "note": "client, server and both CPU vLLM engines share this machine's cores"}
    write_report("bench_interaction", result, _plot, out=args.out)
    return result


if __name__ == "__main__":
    main()
