"""A bounded TLS soak (issue 9): 6 clients stream speech turns over ``wss://`` for 2 minutes; nothing drops.

The long run (8 clients, 30 minutes) is ``bench/bench_soak.py``; this one has the same harness
(:mod:`tests.fakes.soak`), the real server with its TLS context, and real Socket.IO clients in a child
process. Before the fix, 2 of 6 such clients lost their connection within 330 s to
``ssl.SSLError [SSL: BAD_LENGTH]`` in Engine.IO's writer thread. Two minutes (not three) keeps the suite
in its time budget; the 30-minute run is the bench's.
"""

from __future__ import annotations

import pytest

from tests.fakes.soak import SoakConfig, run_soak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_six_wss_clients_for_two_minutes_drop_nothing() -> None:
    result = run_soak(SoakConfig(clients=6, minutes=2.0, tls=True, sample_s=60.0), say=lambda _: None)
    s = result["summary"]
    assert result["client_failure"] is None, result["client_failure"]
    assert s["turns"] >= 6 * 4, s  # every client really talked (a turn takes ~8 s with its reply)
    assert s["dropped_connections"] == 0, result["drops"]
    assert s["bad_length"] == 0 and s["server_thread_exceptions"] == 0, result["server_thread_exceptions"]
    assert s["lost_turns"] == 0 and s["stalled_replies"] == 0 and s["seq_gaps"] == 0, (s, result["lost"])
    # Every binary event left the server whole: header then its attachments, as queued and as written.
    assert not result["server_sequences"]["errors"], result["server_sequences"]
    # No reply_audio arrived torn (another message taken for its PCM): what the emit lock fixed.
    examples = [e for c in result["clients"] for e in c["bad_examples"]]
    torn = s["bad_messages"] - sum(result["client_task_errors"].values())
    assert torn == 0, (s, examples)
    # Open (issue 9): under very heavy load (load average 7-15 on 2 cores) the client library once saw
    # binary messages no header announced (23 in 2065 turns, never a torn event, nothing lost); not seen
    # since in 512 turns with the sequence checks above on. Reported, bounded, and kept visible here.
    assert sum(result["client_task_errors"].values()) <= s["turns"] // 50, (result["client_task_errors"], examples)
    # An acknowledgement slower than the client's timeout on a loaded 2-core box is late, not lost:
    # allow one in 50 turns (seen: 1 in 162 while the whole suite ran).
    assert s["ack_timeouts"] <= s["turns"] // 50, s
    # Everything a connection had is gone once its client left.
    assert s["sessions_left"] == 0 and s["conversations_left"] == 0, s
    assert s["settled_after_s"] is not None, result["threads_not_there_at_start"]
