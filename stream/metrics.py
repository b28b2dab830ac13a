"""Prometheus metrics of one server (a private registry, so several servers can share a process).

Names and units follow Prometheus conventions (seconds, ``_total`` counters). Labels are
bounded: ``model`` and ``route``, plus a small fixed ``reason``/``code`` vocabulary on the
counters -- never a session.

=====================================  =========  =============================================
metric                                  type       meaning
=====================================  =========  =============================================
headway_open_sessions                   gauge      sessions open now {model, route}
headway_queue_depth                     gauge      requests waiting in the engine {model} (read at each scrape)
headway_queue_seconds                   histogram  arrival -> batch start {model}
headway_compute_seconds                 histogram  one batched model call {model}
headway_request_seconds                 histogram  frame received -> reply sent {model, route}
headway_batch_size                      histogram  items per batched call {model}
headway_execution_horizon_ticks         histogram  s of every chunk sent on ``/v1/policy`` {model}
headway_chat_ttft_seconds               histogram  ``prompt_end`` received -> first token sent, ``/v1/chat`` {model}
headway_replies_total                   counter    replies by ``code`` (``ok`` or an error code)
headway_deadline_misses_total           counter    requests answered ``deadline_exceeded`` or
                                                   replied after their deadline, by ``reason``
headway_shed_total                      counter    work refused or dropped, by ``reason``
=====================================  =========  =============================================
"""

from __future__ import annotations

from typing import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.5, 1.0,
                   2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
HORIZON_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 32)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """All metrics of one server process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.open_sessions = Gauge("headway_open_sessions", "Sessions open now", ["model", "route"], registry=r)
        self.queue_depth = Gauge("headway_queue_depth", "Requests waiting in the engine queue", ["model"],
                                 registry=r)
        self.queue_seconds = Histogram("headway_queue_seconds", "Arrival to batch start", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.compute_seconds = Histogram("headway_compute_seconds", "One batched model call", ["model"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram("headway_request_seconds", "Frame received to reply sent",
                                         ["model", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("headway_batch_size", "Items per batched model call", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.execution_horizon = Histogram("headway_execution_horizon_ticks",
                                           "Execution horizon s of each chunk sent to a robot", ["model"],
                                           buckets=HORIZON_BUCKETS, registry=r)
        self.chat_ttft_seconds = Histogram("headway_chat_ttft_seconds",
                                           "Chat time to first token: prompt_end received to first token sent",
                                           ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.replies = Counter("headway_replies_total", "Replies sent, by code", ["model", "route", "code"],
                               registry=r)
        self.deadline_misses = Counter("headway_deadline_misses_total",
                                       "Requests that missed or could not make their deadline, by reason",
                                       ["model", "reason"], registry=r)
        self.shed = Counter("headway_shed_total", "Requests or sessions refused or dropped, by reason",
                            ["model", "reason"], registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def for_engine(self, model: str) -> "EngineMetrics":
        return EngineMetrics(self, model)


class EngineMetrics:
    """The engine's view (``stream.engine.EngineMetricsSink``), bound to one model label.

    Called from the worker thread as well as the loop; prometheus_client is thread-safe.
    """

    def __init__(self, metrics: ServerMetrics, model: str):
        self._queue = metrics.queue_seconds.labels(model)
        self._compute = metrics.compute_seconds.labels(model)
        self._batch = metrics.batch_size.labels(model)
        self._misses = metrics.deadline_misses
        self._shed = metrics.shed
        self._model = model

    def observe_batch(self, size: int, compute_s: float, queue_s: Sequence[float]) -> None:
        self._batch.observe(size)
        self._compute.observe(compute_s)
        for value in queue_s:
            self._queue.observe(value)

    def count_deadline_miss(self, where: str) -> None:
        self._misses.labels(self._model, f"predicted_at_{where}").inc()

    def count_shed(self, reason: str) -> None:
        self._shed.labels(self._model, reason).inc()

