"""Fuzz benchmark: ten thousand hostile events and more against the real server over TLS (tests/fakes/fuzz.py),
plus one message far over the transport limit.

Reports what an operator would want to know after a hostile client met the server: events sent, ``error``
events by code (``internal`` = a server bug), tracebacks logged and exceptions escaping server threads,
connections that neither worked nor were closed ("stuck"), whether a talking bystander kept getting answers,
what was left after everyone left (sessions, engine conversations, threads), the RSS of the process over
the run (the server and the fuzzing clients share it), and the peak RSS growth while a 200 MB message is
refused. Writes ``docs/bench/bench_fuzz.json``
and ``.png``.

    .venv/bin/python -m bench.bench_fuzz [--events 12000] [--clients 8] [--raw 300] [--seed 0] [--no-tls]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
from pathlib import Path

from bench.report import write_report


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    samples = result["samples"]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
    t = [x["t"] for x in samples]
    a.plot(t, [x["rss_mb"] for x in samples], "-", label="RSS, MiB (server and fuzz clients)")
    a.plot(t, [x["threads"] for x in samples], "-", label="OS threads (Engine.IO ping threads sleep 25 s)")
    a.plot(t, [x["sessions"] for x in samples], "-", label="open sessions")
    a.set(xlabel="seconds", title=f"the process; {s['events_sent']} events in {s['seconds']:g} s")
    a.legend(fontsize=8)
    codes = s["errors_by_code"]
    b.barh(list(codes), list(codes.values()), color=["red" if k == "internal" else "tab:blue" for k in codes])
    b.set(xlabel="error events received by clients", title=f"errors by code; internal: {s['internal_errors']}, "
                                                           f"tracebacks: {s['tracebacks']}")
    families: dict[str, int] = {}
    for kind, n in result["events_by_kind"].items():
        families[kind.split(":")[0]] = families.get(kind.split(":")[0], 0) + n
    c.barh(list(families), list(families.values()), color="tab:gray")
    probe = result["over_limit_probe"]
    c.set(xlabel="events sent", title=f"stuck connections: {s['stuck_connections']}; "
                                      f"200 MB message: +{probe['peak_rss_growth_mb']} MiB peak")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    """Run the fuzz and the over-limit probe; write the JSON and the plot."""
    from tests.fakes.fuzz import FuzzConfig, over_limit_probe, run_fuzz

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=12_000, help="events from the Socket.IO fuzz clients, in all")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--raw", type=int, default=300, help="raw WebSocket connections with packet-level cases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-tls", action="store_true", help="plain ws:// (to compare)")
    args = ap.parse_args(argv)
    cfg = FuzzConfig(seed=args.seed, clients=args.clients, events_per_client=math.ceil(args.events / args.clients),
                     raw_connections=args.raw, tls=not args.no_tls)
    result = run_fuzz(cfg)
    result["over_limit_probe"] = over_limit_probe(200_000_000)
    result["machine"] = {"cpu_count": os.cpu_count(), "python": platform.python_version()}
    write_report("bench_fuzz", result, _plot)
    return result


if __name__ == "__main__":
    main()
