"""Prometheus metrics of one server (its own registry: two servers in one process never share counts).

Per-turn stages are histograms in seconds (label ``stage``), so a dashboard can show p50/p90 of each:
``vad_decision`` (speech end in the audio to the VAD's end-of-turn decision), ``judge`` (decision to
the monitor's first token), ``first_clause`` (decision to the generator's first speakable clause),
``first_audio_sent`` and ``first_audio_played`` (the client's first playback report), and
``barge_in_pause`` (speech start decision to the pause being sent).

Engine supervision is read from the engine at each scrape: ``vita_engine_state{engine,state}`` (1 for the
engine's current state of ``starting``/``ready``/``restarting``/``dead``, 0 for the others),
``vita_engine_restart_attempts_total{engine}``, ``vita_engine_restarts_total{engine}`` and
``vita_engine_active_requests{engine}``; ``vita_draining`` is 1 once a graceful shutdown has begun.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.interface import EngineState, EngineStatus

log = logging.getLogger(__name__)

STAGES = ("vad_decision", "judge", "first_clause", "first_audio_sent", "first_audio_played", "barge_in_pause")
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 0.8, 1.0, 1.5, 2.5, 5.0, 10.0)
ENGINE_STATES: tuple[str, ...] = get_args(EngineState)


class _EngineCollector(Collector):
    """Per-engine state and restart counts, asked of the engine at each scrape."""

    def __init__(self, statuses: Callable[[], Sequence[EngineStatus]]) -> None:
        self._statuses = statuses

    def _families(self) -> tuple[GaugeMetricFamily, CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("vita_engine_state", "1 for each engine's current state (starting, ready, "
                              "restarting, dead), 0 for the others", labels=["engine", "state"]),
            CounterMetricFamily("vita_engine_restart_attempts", "Automatic restart attempts started per engine",
                                labels=["engine"]),
            CounterMetricFamily("vita_engine_restarts", "Successful automatic restarts per engine", labels=["engine"]),
            GaugeMetricFamily("vita_engine_active_requests", "Requests in flight per engine", labels=["engine"]),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        state, attempts, restarts, active = self._families()
        try:
            statuses = list(self._statuses())
        except Exception:  # a broken engine shows as no engines, not as a failed scrape
            log.exception("engine statuses failed")
            statuses = []
        for s in statuses:
            for name in ENGINE_STATES:
                state.add_metric([s.name, name], 1.0 if s.state == name else 0.0)
            attempts.add_metric([s.name], s.restart_attempts)
            restarts.add_metric([s.name], s.restarts)
            active.add_metric([s.name], s.active)
        yield from (state, attempts, restarts, active)


class ServerMetrics:
    """Counters, gauges and stage histograms of one server."""

    def __init__(self, active_sessions: Callable[[], float], engine_healthy: Callable[[], float],
                 engine_statuses: Callable[[], Sequence[EngineStatus]] | None = None,
                 draining: Callable[[], float] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage = Histogram("vita_turn_stage_seconds", "Per-turn latency of each stage", ["stage"],
                               buckets=_BUCKETS, registry=r)
        for stage in STAGES:
            self.stage.labels(stage)  # every stage is exported from the start, at zero
        self.interruptions = Counter("vita_interruptions", "Replies cut off by the user (barge-in, text, stop, reset)",
                                     registry=r)
        self.false_interruptions = Counter(
            "vita_false_interruptions", "Replies paused for speech that then turned out not to be a query "
            "(judged not addressed or too short); the reply resumed", registry=r)
        self.not_addressed = Counter("vita_not_addressed", "Utterances judged not addressed (☟) or too short",
                                     registry=r)
        self.echo_suppressed = Counter("vita_echo_suppressed", "Speech the echo guard took for the assistant's own "
                                       "voice (no pause, no turn)", registry=r)
        self.turns = Counter("vita_turns", "Utterances and typed questions handed to the engine", registry=r)
        self.withdrawn = Counter("vita_turns_withdrawn", "Utterances answered ahead of the end-of-turn decision "
                                 "and dropped because the user went on (model work spent on pauses)", registry=r)
        self.engine_errors = Counter("vita_engine_errors", "Engine errors reported to sessions", registry=r)
        Gauge("vita_active_sessions", "Connected sessions", registry=r).set_function(active_sessions)
        Gauge("vita_engine_healthy", "1 while the engine reports ok", registry=r).set_function(engine_healthy)
        Gauge("vita_draining", "1 once a graceful shutdown (SIGTERM) has begun", registry=r).set_function(
            draining or (lambda: 0.0))
        if engine_statuses is not None:
            r.register(_EngineCollector(engine_statuses))

    def observe(self, stage: str, ms: float | None) -> None:
        """Record one stage latency given in milliseconds (ignored when unknown or negative)."""
        if ms is not None and ms >= 0:
            self.stage.labels(stage).observe(ms / 1000)

    def exposition(self) -> bytes:
        """The text format for ``GET /metrics``."""
        return generate_latest(self.registry)
