"""Replicas behind a real load balancer (issue 11): three ``launch.py --no-tls`` processes on loopback behind
Debian's HAProxy, configured from the shipped ``deploy/haproxy.cfg`` (tests/fakes/replicas.py), clients over
``wss://`` through the proxy.

Checks: sessions spread across replicas by least connections; a full replica (/readyz 503) gets no new
sessions; SIGTERM on one replica drains it (its reply finishes, newcomers go elsewhere, it exits 0); killing
one makes its client reconnect through the proxy to another. The replicas start once for the module (each
loads its own engine on the tiny checkpoint); the drain and the kill each use one up, and a test run on its
own restarts what it needs. ``bench/bench_replicas.py`` records the same scenarios' figures.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakes.replicas import (
    SHIPPED_CFG,
    Cluster,
    drain_one,
    free_port,
    full_replica_skipped,
    haproxy_binary,
    kill_one,
    loopback_config,
    spread,
)

# The first test that uses the cluster also waits for three replicas to start (START_TIMEOUT_S).
pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def haproxy() -> str:
    """Debian's haproxy; skipped where missing (``make test-deps`` installs it), failed under CI=true."""
    found = haproxy_binary()
    if found is None:
        msg = "haproxy is not installed (Debian package `haproxy`; `make test-deps` installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return found


@pytest.fixture(scope="module")
def cluster(haproxy: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three replicas (``--max_users 2``) behind haproxy, for the whole module."""
    c = Cluster(tmp_path_factory.mktemp("replicas"))
    try:
        yield c.start(haproxy)
    finally:
        c.stop()
    assert c.proxy is None or c.proxy.proc.poll() is not None
    assert all(not r.alive for r in c.members)


def test_loopback_config_keeps_the_shipped_settings(haproxy: str, tmp_path: Path) -> None:
    from server.tls import make_self_signed

    cert, key = make_self_signed(tmp_path / "tls", ["127.0.0.1"])
    pem = tmp_path / "vita.pem"
    pem.write_text(cert.read_text() + key.read_text())
    shipped = SHIPPED_CFG.read_text()
    text = loopback_config(shipped, [("vita-1", 9001), ("vita-2", 9002)], free_port(), free_port(), pem,
                           tmp_path / "s.sock")
    for line in ("balance leastconn", "option httpchk GET /readyz", "http-check expect status 200",
                 "timeout tunnel 1h", "X-Forwarded-Proto https", "option redispatch", "deny_status 404 if { path_beg /metrics }"):
        assert line in shipped and line in text, line
    assert "resolvers" not in text.replace("# Docker", "") and "vita-1:8081" not in text
    assert "server vita-1 127.0.0.1:9001" in text and "default-server check inter 200ms fall 1 rise 1" in text
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    run = subprocess.run([haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_sessions_spread_across_replicas_by_least_connections(cluster: Cluster) -> None:
    cluster.ensure_live(3)
    got = spread(cluster)
    print(f"\nsessions per replica: {got['sessions_per_replica']} (order {got['order']})")
    assert got["extra_client_refused_by_proxy"]


def test_a_full_replica_gets_no_new_sessions(cluster: Cluster) -> None:
    cluster.ensure_live(3)
    got = full_replica_skipped(cluster)
    print(f"\nfull -> proxy DOWN {got['full_to_proxy_down_s']} s; freed -> UP {got['freed_to_proxy_up_s']} s")
    assert got["full_to_proxy_down_s"] < 10 and got["freed_to_proxy_up_s"] < 10


def test_sigterm_drains_one_replica_while_the_others_serve(cluster: Cluster) -> None:
    cluster.ensure_live(2)
    got = drain_one(cluster)
    print(f"\ndrain: {got}")
    assert got["exit_code"] == 0 and got["reply_end_reason"] == "done"
    assert got["sigterm_to_proxy_down_s"] < 10
    assert got["sigterm_to_reply_end_s"] <= got["sigterm_to_exit_s"] < cluster.drain_s + 30


def test_killed_replica_clients_reconnect_to_another(cluster: Cluster) -> None:
    cluster.ensure_live(2)
    got = kill_one(cluster)
    print(f"\nkill: {got}")
    assert got["reconnected_to"] != got["replica"]
    assert got["kill_to_disconnect_s"] < 10 and got["kill_to_reconnected_s"] < 30
