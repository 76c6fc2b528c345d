"""Replicas behind HAProxy: real ``launch.py`` replicas (tiny checkpoint) on loopback behind Debian's haproxy,
configured from the shipped ``deploy/haproxy.cfg`` with 200 ms readiness checks (tests/fakes/replicas.py).

Runs the scenarios of ``tests/test_replicas.py`` once and records their figures: sessions per replica
under least-connections balancing, how fast a full replica leaves and rejoins the pool, the drain of a
SIGTERMed replica (proxy DOWN, reply end, exit), and how fast the client of a SIGKILLed replica is back in
a session on another one. Writes ``docs/bench/bench_replicas.json`` and ``.png``.

    .venv/bin/python -m bench.bench_replicas [--replicas 3] [--max_users 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from bench.report import write_report


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    spread = result["spread"]["sessions_per_replica"]
    full = result["full_replica"]
    names = list(spread)
    landed = [full["landed_elsewhere"].count(n) for n in names]
    x = range(len(names))
    a.bar([i - 0.2 for i in x], [spread[n] for n in names], 0.4, label="all replicas free")
    a.bar([i + 0.2 for i in x], landed, 0.4, label=f"{full['full_replica']} full (direct clients)")
    a.set(xticks=list(x), xticklabels=names, ylabel="sessions through the proxy",
          title="leastconn: where sessions landed")
    a.set_ylim(0, max(spread.values()) + 1)
    a.yaxis.get_major_locator().set_params(integer=True)
    a.legend(fontsize=8, loc="upper left")
    for ax, key, steps, title in (
        (b, "drain", ("sigterm_to_proxy_down_s", "sigterm_to_reply_end_s", "sigterm_to_exit_s"),
         "SIGTERM: drain of one replica"),
        (c, "kill", ("kill_to_disconnect_s", "kill_to_proxy_down_s", "kill_to_reconnected_s"),
         "SIGKILL: its client reconnects elsewhere"),
    ):
        got = result[key]
        labels = [s.split("_to_")[1].removesuffix("_s").replace("_", " ") for s in steps]
        ax.barh(labels, [got[s] for s in steps], color="tab:orange" if key == "drain" else "tab:red")
        for i, s in enumerate(steps):
            ax.text(got[s], i, f" {got[s]:.2f} s", va="center", fontsize=8)
        ax.set(xlabel="seconds after the signal", title=title)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict:
    """Start the replicas and haproxy, run every scenario once, write the JSON and the plot."""
    from tests.fakes.replicas import (
        TEST_CHECK,
        Cluster,
        Proxy,
        drain_one,
        full_replica_skipped,
        haproxy_binary,
        kill_one,
        shipped_check,
        spread,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--max_users", type=int, default=2)
    ap.add_argument("--drain_s", type=float, default=120.0)
    args = ap.parse_args(argv)
    binary = haproxy_binary()
    if binary is None:
        raise SystemExit("haproxy is not installed (Debian package `haproxy`; `make test-deps` installs it)")
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as home:
        cluster = Cluster(Path(home), replicas=args.replicas, max_users=args.max_users, drain_s=args.drain_s)
        try:
            started = time.monotonic()
            cluster.start(binary)
            start_s = time.monotonic() - started
            result = {"spread": spread(cluster), "full_replica": full_replica_skipped(cluster),
                      "drain": drain_one(cluster), "kill": kill_one(cluster)}
            # Once more with the shipped check interval: a killed replica stays in the pool until its
            # checks fail, and leastconn prefers it then (it has no connections left).
            cluster.ensure_live(2)
            assert cluster.proxy is not None
            cluster.proxy.stop()
            cluster.proxy = Proxy(binary, Path(home) / "haproxy-shipped", cluster.members, shipped_check())
            for r in cluster.live():
                cluster.proxy.wait_healthy(r.name, 60)
            result["kill_shipped_checks"] = {"health_check": shipped_check(), **kill_one(cluster)}
        finally:
            cluster.stop()
    version = subprocess.run([binary, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    result["setup"] = {"replicas": args.replicas, "max_users": args.max_users, "drain_s": args.drain_s,
                       "health_check": TEST_CHECK, "engine": "tiny random checkpoint, 1 engine per replica",
                       "transport": "wss:// to haproxy (TLS ends there), ws:// to the replicas",
                       "replicas_start_s": round(start_s, 1), "haproxy": version}
    result["summary"] = {
        "sessions_per_replica": result["spread"]["sessions_per_replica"],
        "drain_s": result["drain"]["sigterm_to_exit_s"],
        "reconnect_s": result["kill"]["kill_to_reconnected_s"],
        "reconnect_shipped_checks_s": result["kill_shipped_checks"]["kill_to_reconnected_s"],
    }
    result["machine"] = {"cpu_count": os.cpu_count(), "python": platform.python_version()}
    write_report("bench_replicas", result, _plot)
    return result


if __name__ == "__main__":
    main()
