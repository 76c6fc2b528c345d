"""TLS soak: N clients stream real-time speech turns (with camera frames, barge-ins and typed turns) over
``wss://`` for many minutes against the real server and the scripted fake engine.

Counts what a user would notice: connections dropped without the client asking, turns lost, replies that
stalled or lost audio, sequence gaps; and what an operator would: server RSS, OS threads, open sessions
every ``--sample`` seconds, exceptions escaping server threads (``ssl.SSLError [SSL: BAD_LENGTH]`` was
the wave-1 failure) and warnings logged. Writes ``docs/bench/bench_soak.json`` and ``.png``.

    .venv/bin/python -m bench.bench_soak [--clients 8] [--minutes 30] [--no-tls]
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

from bench.report import write_report


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t"] / 60 for s in samples]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(t, [s["rss_mb"] for s in samples], "-o")
    a.set(xlabel="minutes", ylabel="MiB", title="server RSS")
    b.plot(t, [s["threads"] for s in samples], "-o", label="OS threads")
    b.plot(t, [s["sessions"] for s in samples], "-s", label="open sessions")
    for drop in result["drops"]:
        b.axvline(drop["t"] / 60, color="red", lw=0.8)
    s = result["summary"]
    b.set(xlabel="minutes", title=f"threads and sessions; {s['dropped_connections']} drops, "
                                  f"{s['lost_turns']} lost of {s['turns']} turns")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    """Run the soak and write its JSON and plot."""
    from tests.fakes.soak import SoakConfig, run_soak

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sample", type=float, default=300.0, help="seconds between resource samples")
    ap.add_argument("--no-tls", action="store_true", help="plain ws:// (to compare)")
    args = ap.parse_args(argv)
    cfg = SoakConfig(clients=args.clients, minutes=args.minutes, tls=not args.no_tls, sample_s=args.sample)
    result = run_soak(cfg)
    result["machine"] = {"cpu_count": os.cpu_count(), "python": platform.python_version()}
    write_report("bench_soak", result, _plot)
    return result


if __name__ == "__main__":
    main()
