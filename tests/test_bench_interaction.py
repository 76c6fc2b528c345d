"""The interaction benchmark: its clips (deterministic, ground truth where the VAD hears speech), its metrics on
hand-made timelines, and one small run against a real server (``--awakening always``, one scenario per category)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bench.interaction.clips import CATEGORIES, MIC, make_scenario, make_scenarios, tools_missing
from bench.interaction.timeline import Event, Trial, evaluate, replay

# Where the server's VAD should put a clip's speech: its onset within a few 32 ms windows of Silero's start
# (espeak's first phoneme may be soft), its offset later by Silero's lag (in noise the level refinement
# cannot pull the end back: up to 0.21 s over seeds 0-1, 8 clips a category).
ONSET_TOL_S = 0.16
OFFSET_TOL_S = 0.25


@pytest.fixture(scope="module")
def clip_tools() -> None:
    """espeak-ng and sox; skipped where missing (``make test-deps`` installs them), failed under CI=true."""
    if missing := tools_missing():
        msg = f"{' and '.join(missing)} not installed (Debian packages espeak-ng, sox; `make test-deps`)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def test_clips_are_the_same_for_a_seed_and_differ_across_seeds(clip_tools: None, tmp_path: Path) -> None:
    # two empty caches: the second run renders everything again instead of reading the first's files
    a = make_scenarios(5, 2, cache=tmp_path / "a")
    b = make_scenarios(5, 2, cache=tmp_path / "b")
    assert [s.describe() for s in a] == [s.describe() for s in b]
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.probe.pcm, y.probe.pcm)
        assert np.array_equal(x.probe.voice_track, y.probe.voice_track)
        assert (x.lead is None) == (y.lead is None)
        if x.lead is not None and y.lead is not None:
            assert np.array_equal(x.lead.pcm, y.lead.pcm)
    other = make_scenarios(6, 2, cache=tmp_path / "a")
    assert [s.describe() for s in other] != [s.describe() for s in a]
    assert {s.category for s in a} == set(CATEGORIES)


def test_pauses_and_levels_follow_the_spec(clip_tools: None, tmp_path: Path) -> None:
    for i in range(6):
        sc = make_scenario("pause", i, 1, tmp_path)
        (a, b), pause = sc.probe.speech, sc.pause_s
        assert pause is not None and 0.4 <= pause <= 1.5
        assert abs((b.start - a.end) / MIC - pause) < 1e-3
    sc = make_scenario("side_talk", 0, 1, tmp_path)  # the second voice is quieter than a user would be
    assert sc.variant == "second_voice" and sc.probe.level_dbfs < -26.0


def _vad_segments(pcm: np.ndarray) -> list[tuple[float, float]]:
    from vad.segmenter import SpeechEnded, SpeechStarted, UtteranceSegmenter

    seg = UtteranceSegmenter()
    lead = np.zeros(MIC // 2, np.int16)  # a little silence first, as the client's mic has
    x = np.concatenate([lead, pcm, np.zeros(MIC, np.int16)])
    starts, spans = [], []
    for ev in seg.push(x):
        if isinstance(ev, SpeechStarted):
            starts.append(ev.start_sample)
        elif isinstance(ev, SpeechEnded):
            spans.append(((ev.start_sample - lead.size) / MIC, (ev.end_sample - lead.size) / MIC))
    return spans


@pytest.mark.parametrize("category", CATEGORIES)
def test_ground_truth_is_where_silero_hears_speech(clip_tools: None, category: str) -> None:
    for i in range(2):
        sc = make_scenario(category, i, 0)
        # buried TV speech is meant to be hard to hear: its boundaries are checked on the voice alone
        pcm = sc.probe.pcm if sc.variant != "background" else (sc.probe.voice_track * 32767).astype(np.int16)
        found = _vad_segments(pcm)
        truth = [s.seconds for s in sc.probe.speech]
        if category == "pause" and sc.pause_s is not None:
            # a pause shorter than the end-of-turn silence (500 ms) stays inside one turn, a longer one
            # splits it; near the limit either may happen (the late end in noise shortens the silence)
            if sc.pause_s < 0.45 or (sc.pause_s < 0.7 and len(found) == 1):
                truth = [(truth[0][0], truth[-1][1])]
        assert len(found) == len(truth), (sc.name, found, truth)
        for (f0, f1), (t0, t1) in zip(found, truth, strict=True):
            assert abs(f0 - t0) <= ONSET_TOL_S, (sc.name, "onset", f0, t0)
            assert abs(f1 - t1) <= OFFSET_TOL_S, (sc.name, "offset", f1, t1)


# ---------------------------------------------------------------- metrics on hand-made timelines


def _audio(t: float, rid: str, seconds: float, epoch: int = 1) -> Event:
    return Event(t, "reply_audio", {"reply_id": rid, "epoch": epoch, "seq": 0}, round(seconds * 24_000))


def _vad(t: float, kind: str, end_ms: float | None = None) -> Event:
    return Event(t, "vad", {"type": kind, "end_ms": end_ms})


def test_player_pauses_resumes_flushes_and_drops_old_epochs() -> None:
    events = [Event(0.0, "reply_start", {"reply_id": "r1", "epoch": 1}), _audio(0.0, "r1", 1.0),
              Event(0.4, "pause", {"reply_id": "r1"}), Event(0.7, "resume", {"reply_id": "r1"}),
              Event(0.9, "interrupt", {"reply_id": "r1", "epoch": 2}), _audio(0.95, "r1", 0.5, epoch=1),
              _audio(1.0, "r2", 0.25, epoch=2)]
    p = replay(events, 5.0)
    spans = [(round(a.start, 3), round(a.end, 3), a.reply_id) for a in p.audible]
    assert spans == [(0.0, 0.4, "r1"), (0.7, 0.9, "r1"), (1.0, 1.25, "r2")]
    assert p.played == {"r1": round(0.6 * 24_000), "r2": 6000}


def _two_stage(category: str, events: list[Event], onset: float = 2.0, offset: float = 2.5) -> Trial:
    return Trial(f"{category}-0", category, events, 10.0, probe_speech=[(onset, offset)],
                 probe_speech_mic_ms=[(onset * 1000, offset * 1000)])


def test_interruption_stop_latency_is_onset_to_the_pause_that_silenced_the_client() -> None:
    ev = [Event(1.0, "reply_start", {"reply_id": "r1", "epoch": 1}), _audio(1.0, "r1", 3.0),
          Event(2.16, "pause", {"reply_id": "r1"}), _vad(3.02, "speech_end", 2500),
          Event(3.03, "interrupt", {"reply_id": "r1", "epoch": 2}),
          Event(3.03, "reply_start", {"reply_id": "r2", "epoch": 2}), _audio(3.6, "r2", 1.0, epoch=2)]
    out = evaluate(_two_stage("interruption", ev))
    assert out.valid and out.stop_cause == "pause" and out.took_over and out.resumed is False
    assert out.stop_latency_ms == pytest.approx(160, abs=0.01)
    assert out.response_latency_ms == pytest.approx(1100, abs=0.01)


def test_a_backchannel_that_paused_then_resumed_is_a_false_interruption_that_resumed() -> None:
    ev = [Event(1.0, "reply_start", {"reply_id": "r1", "epoch": 1}), _audio(1.0, "r1", 3.0),
          Event(2.17, "pause", {"reply_id": "r1"}), _vad(2.9, "speech_end", 2300),
          Event(2.95, "judgement", {"reply_id": "r1", "addressed": False, "why": "too_short"}),
          Event(2.95, "resume", {"reply_id": "r1"})]
    out = evaluate(_two_stage("backchannel", ev, 2.0, 2.3))
    assert out.false_interruption and out.resumed and not out.took_over
    assert out.resume_gap_ms == pytest.approx(780, abs=0.01) and out.judgements == ["too_short"]


def test_a_reply_that_ran_out_before_the_probe_makes_the_trial_invalid_and_one_that_ends_is_no_stop() -> None:
    done = Event(1.2, "reply_end", {"reply_id": "r1", "reason": "done"})
    short = [Event(1.0, "reply_start", {"reply_id": "r1", "epoch": 1}), _audio(1.0, "r1", 0.5), done]
    assert evaluate(_two_stage("interruption", short)).invalid_reason == "assistant not speaking at the probe's onset"
    ends = [Event(1.0, "reply_start", {"reply_id": "r1", "epoch": 1}), _audio(1.0, "r1", 1.1), done,
            Event(2.5, "pause", {"reply_id": "r1"})]
    out = evaluate(_two_stage("backchannel", ends))
    assert out.stop_cause == "reply_ended" and out.false_interruption is False and out.stop_latency_ms is None


def test_a_late_chunk_is_an_underrun_not_the_end_of_the_reply() -> None:
    # the player ran dry at 1.5 s (before the onset); the next chunk came at 2.1, the pause at 2.17
    ev = [Event(1.0, "reply_start", {"reply_id": "r1", "epoch": 1}), _audio(1.0, "r1", 0.5),
          _audio(2.1, "r1", 1.0), Event(2.17, "pause", {"reply_id": "r1"})]
    out = evaluate(_two_stage("interruption", ev))
    assert out.valid and out.stop_cause == "pause" and out.stop_latency_ms == pytest.approx(170, abs=0.01)
    assert out.underruns == 1 and out.underrun_ms == pytest.approx(600, abs=0.01)


def test_pause_take_over_counts_audio_between_the_parts() -> None:
    ev = [_vad(1.55, "speech_end", 1000), Event(1.56, "reply_start", {"reply_id": "r1", "epoch": 1}),
          _audio(1.9, "r1", 2.0), Event(2.1, "pause", {"reply_id": "r1"}), _vad(3.55, "speech_end", 3000),
          Event(3.56, "interrupt", {"reply_id": "r1", "epoch": 2}),
          Event(3.56, "reply_start", {"reply_id": "r2", "epoch": 2}), _audio(3.9, "r2", 1.0, epoch=2)]
    trial = Trial("pause-0", "pause", ev, 6.0, probe_speech=[(0.5, 1.0), (2.0, 3.0)],
                  probe_speech_mic_ms=[(500, 1000), (2000, 3000)])
    out = evaluate(trial)
    assert out.took_over and out.turn_cut_in_pause
    assert out.response_latency_ms == pytest.approx(900, abs=0.01)  # to the reply after the whole request


def test_a_vad_end_before_the_soft_tail_still_finds_the_reply() -> None:
    # espeak's last phoneme fades out: the server's end (2816 ms) fell before the ground truth's (2890 ms)
    ev = [_vad(3.34, "speech_end", 2816), Event(3.35, "reply_start", {"reply_id": "r1", "epoch": 1}),
          _audio(3.77, "r1", 1.0)]
    trial = Trial("smooth-0", "smooth", ev, 6.0, probe_speech=[(0.9, 2.89)], probe_speech_mic_ms=[(900, 2890)])
    out = evaluate(trial)
    assert out.took_over and out.vad_turns == 1
    assert out.response_latency_ms == pytest.approx(880, abs=0.01)


# ---------------------------------------------------------------- against a real server


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_a_small_run_against_a_real_server_reports_every_category(clip_tools: None, tmp_path: Path) -> None:
    from bench.bench_interaction import METRICS, main

    # One scenario per category and one engine keep this under two minutes; the metrics' rules have their
    # own tests above, on hand-made timelines.
    main(["--per-category", "1", "--awakening", "always", "--num_engines", "1", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench_interaction.json").read_text())
    assert (tmp_path / "bench_interaction.png").stat().st_size > 0
    assert result["meaningless_with_random_weights"] and "random" in result["notes"].lower()
    cats = result["modes"]["always"]["categories"]
    assert set(cats) == set(CATEGORIES)
    for name, fig in cats.items():
        assert set(METRICS) <= set(fig), name
        assert fig["trials"] == 1 and fig["valid"] == 1, (name, fig["invalid"])
    assert cats["smooth"]["tor"]["rate"] > 0
    lat = cats["smooth"]["response_latency_ms"]
    assert lat["n"] >= 1 and 0 < lat["p50"] < 10_000
    stop = cats["interruption"]["stop_latency_ms"]
    assert stop["n"] >= 1 and 0 < stop["p50"] < 2_000
    assert cats["interruption"]["tor"]["rate"] > 0  # 'always' answers every utterance long enough
    assert all(0 <= (cats[c]["tor"]["rate"] or 0) <= 1 for c in CATEGORIES)
