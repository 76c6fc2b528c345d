"""The README's table of measured figures, made from the benchmarks' JSON in ``docs/bench/``.

``make bench`` runs it last (``bench.run_all``); ``python -m bench.readme_table`` rewrites the block between
the two marker lines of ``README.md`` from whatever JSON is there now. A test keeps the README and the JSON
in step. Figures whose JSON is missing are shown as "not run".
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "docs" / "bench"
README = ROOT / "README.md"
START = "<!-- bench-table:start (written by `make bench`: python -m bench.readme_table) -->"
END = "<!-- bench-table:end -->"
CATEGORIES = ("pause", "backchannel", "side_talk", "smooth", "interruption")

Json = dict


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms"


def _rate(cell: Json | None) -> str:
    return "–" if not cell or cell.get("rate") is None else f"{cell['rate']:.2f}"


def _first_audio(d: Json) -> list[tuple[str, str, str]]:
    modes = d["modes"]

    def client(mode: str) -> str:
        c = modes[mode]["stages_ms"]["client_turn_end_to_first_audio"]
        return f"{_ms(c['p50'])} (p90 {_ms(c['p90'])}, {modes[mode]['turns']} turns)"

    def stages(mode: str) -> str:
        s = modes[mode]["stages_ms"]
        return ", ".join(f"{name} {_ms(s[key]['p50'])}" for name, key in (
            ("verdict", "engine_judge"), ("first clause", "engine_first_clause"), ("first code", "engine_first_code"),
            ("first audio made", "engine_first_audio"), ("first audio sent", "first_audio")) if key in s)

    ahead = modes["answer_ahead"]["stages_ms"]["answered_ahead"]["p50"]
    return [
        ("End of turn → first reply audio at the client, p50 (tiny checkpoint, 1 user, silence tail excluded), "
         f"answering ahead after {d['answer_ahead_ms']:.0f} ms of silence (default)", "≤ 150 ms", client("answer_ahead")),
        ("… with answering ahead off (`--vad_answer_ahead_ms 0`: all work starts at the decision)", "",
         client("at_decision")),
        (f"… stages, p50 ms from the end-of-turn decision; answering ahead (work began {_ms(ahead)} before it)", "",
         stages("answer_ahead")),
        ("… stages with answering ahead off", "", stages("at_decision")),
    ]


def _endpoint(d: Json) -> list[tuple[str, str, str]]:
    a = d["after_tail_ms"]
    return [(f"True end of speech → `speech_end`, minus the {d['tail_ms']} ms tail ({d['turns']} turns of the "
             "speech fixtures)", f"≤ {d['goal_ms']:.0f} ms",
             f"median {_ms(a['median'])}, max {_ms(a['max'])}")]


def _duplex(d: Json) -> list[tuple[str, str, str]]:
    ratios = d["ratio_whole_over_streaming_p50"]
    by_users = {row["users"]: row for row in d["streaming"]}
    p90 = {u: by_users[u]["speech_end_to_first_audio_ms"]["p90"] for u in by_users}
    lo, hi = min(p90), max(p90)
    costs = d.get("checkpoint_costs")
    ckpt = (f"`{d['sizes']}` checkpoint, one stream decodes {costs['llm_decode_tokens_per_s']:.0f} tokens/s here, "
            f"answers of {d['max_new_tokens']} tokens" if costs else "tiny checkpoint")
    return [
        (f"First audio, whole answer first ÷ streaming (p50; {ckpt}), users " + "/".join(str(u) for u in ratios),
         "≥ 3×", " / ".join("–" if r is None else f"{r:.2f}×" for r in ratios.values())
         + _after_turn(d.get("ratio_whole_over_streaming_p50_after_turn_end"))),
        (f"First audio p90 with {hi} users ÷ with {lo} (streaming)", "≤ 2×",
         f"{p90[hi] / p90[lo]:.2f}× ({_ms(p90[hi])} vs {_ms(p90[lo])})"),
    ]


def _after_turn(ratios: Json | None) -> str:
    if not ratios:
        return ""
    return " (from the end-of-turn decision, silence tail excluded: " + " / ".join(
        "–" if r is None else f"{r:.2f}×" for r in ratios.values()) + ")"


def _interaction(d: Json) -> list[tuple[str, str, str]]:
    rows = []
    for mode in d["awakening"]:
        cats = d["modes"][mode]["categories"]
        tor = ", ".join(f"{c} {_rate(cats[c]['tor'])}" for c in CATEGORIES if c in cats)
        rows.append((f"Take-over rate by category, `--awakening {mode}`", "low for pause / backchannel / side "
                     "talk; 1 for smooth / interruption", tor))
        smooth, cut, back = cats.get("smooth", {}), cats.get("interruption", {}), cats.get("backchannel", {})
        rows.append((f"Response p50 (smooth), stop latency p50 (interruption / backchannel), false "
                     f"interruptions on backchannels, `--awakening {mode}`", "",
                     f"{_ms((smooth.get('response_latency_ms') or {}).get('p50'))}, "
                     f"{_ms((cut.get('stop_latency_ms') or {}).get('p50'))} / "
                     f"{_ms((back.get('stop_latency_ms') or {}).get('p50'))}, "
                     f"{_rate(back.get('false_interruption_rate'))}"))
    return rows


SOURCES: tuple[tuple[str, Callable[[Json], list[tuple[str, str, str]]]], ...] = (
    ("bench_first_audio", _first_audio),
    ("bench_endpoint", _endpoint),
    ("bench_duplex", _duplex),
    ("bench_interaction", _interaction),
)


def table(bench_dir: Path = BENCH_DIR) -> str:
    """The markdown block (markers included) for the JSON files in ``bench_dir``."""
    lines = [START, "", "| figure | goal | measured | bench |", "|---|---|---|---|"]
    for name, rows in SOURCES:
        path = bench_dir / f"{name}.json"
        if not path.exists():
            lines.append(f"| `{name}` | | not run | `{name}` |")
            continue
        for figure, goal, measured in rows(json.loads(path.read_text())):
            lines.append(f"| {figure} | {goal} | {measured} | `{name}` |")
    lines += ["", "Two shared CPU cores, random-weights checkpoints: the tiny one unless a row names another (so "
              "take-over rates and verdicts say nothing about VITA-1.5 itself: see each bench's JSON). Plots: "
              "`docs/bench/*.png`.", "", END]
    return "\n".join(lines)


def rewrite(readme: Path = README, bench_dir: Path = BENCH_DIR) -> bool:
    """Replace the README's block with a fresh one; True when it changed."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: the bench-table marker lines are missing")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + table(bench_dir) + tail
    readme.write_text(new)
    return new != text


if __name__ == "__main__":
    print("README table " + ("updated" if rewrite() else "already current"), file=sys.stderr)
