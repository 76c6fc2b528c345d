"""A seeded fuzz of the real server over TLS (tests/fakes/fuzz.py): every event type with good and bad payloads,
unknown and reserved event names, malformed Engine.IO / Socket.IO packets on raw WebSockets, messages over
the transport limit, and a bystander that must get its answers throughout.

``bench/bench_fuzz.py`` runs the same with ten thousand events and more and reports the figures.
"""

from __future__ import annotations

from tests.fakes.fuzz import MALFORMED, FuzzConfig, run_fuzz


def test_fuzzed_server_stays_correct_and_leaves_nothing_behind():
    cfg = FuzzConfig(seed=7, clients=6, events_per_client=500, raw_connections=100, over_limit_every=300)
    result = run_fuzz(cfg, say=lambda *_: None)
    s = result["summary"]
    detail = {k: result[k] for k in ("stuck", "tracebacks", "thread_exceptions", "client_library_errors")} | {"summary": s}

    assert s["events_sent"] >= cfg.clients * cfg.events_per_client + cfg.raw_connections, detail
    # the server never failed on what it was sent, and nothing escaped a thread
    assert s["internal_errors"] == 0 and s["tracebacks"] == 0 and s["thread_exceptions"] == 0, detail
    # every connection either kept working or was closed by the server, as its case required
    assert s["stuck_connections"] == 0 and s["client_failures"] == [], detail
    assert s["connections"].get("socketio:closed_unexpected", 0) == 0, detail
    assert s["connections"].get("raw:closed", 0) > 0 and s["connections"].get("raw:worked", 0) > 0, detail
    # exactly one session per accepted connection, however many "connect" events were sent
    assert s["sessions_opened"] == s["connects_accepted"], detail
    # the user next door finished every turn with reply audio and never saw an error
    assert s["bystander_failed"] is None and s["bystander_errors"] == [], detail
    assert s["bystander_turns"] >= 1 and s["bystander_turns_with_audio"] == s["bystander_turns"], detail
    # nothing left: sessions, engine conversations, threads
    assert s["settled"] and s["sessions_left"] == 0 and s["conversations_open"] == 0 and s["threads_left"] == [], detail

    # the fuzz reached every kind of refusal (so a silent edge would have been noticed)
    for code in ("bad_type", "bad_audio", "bad_frame", "bad_control", "not_started", "rate_limited", "bad_packet"):
        assert s["errors_by_code"].get(code, 0) > 0, (code, s["errors_by_code"])
    families = {kind.split(":")[0] for kind in result["events_by_kind"]}
    assert {"audio", "frame", "control", "bad_control", "name", "flood", "raw"} <= families, families
    assert result["events_by_kind"].get("over_limit", 0) >= 1
    violations = result["guard"]["violations"]
    assert violations.get("message_too_big", 0) >= 1 and violations.get("eio_malformed", 0) >= 1, violations
    assert sum(violations.values()) >= s["connections"].get("raw:closed", 0)
    assert s["connections"]["raw:closed"] >= len(MALFORMED) and len(MALFORMED) >= 25  # every known case ran
