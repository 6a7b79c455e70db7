"""Steplog's Prometheus metrics: every metric of every long-running process is defined here, so
that their names live in one place (README, "Operations" / "Metrics", lists them with their
meaning; alerting rules are written against exactly these names). The code counts where things
happen: the processors' consumers, fold host, projection writes, timer service and dead letters,
the worker's run executor; the SDK's sender is read by a collector an application registers
itself (`register_sender`).

Each process serves its own registry (no prometheus-client multiprocess mode, no shared files):
the processors on their health endpoint (`GET /metrics`, steplog/server/process_health.py), a
worker on `--metrics-port` (`serve_metrics`), the web service on its own port (`/metrics`, a key
of role read or above covering every project). Every series of a metric family is per process;
Prometheus sums them.

The metric objects belong to one `Metrics`, the process's (`metrics()`); tests that count in
their own process start from a fresh one (`reset()`), so no count leaks from one test into the
next. The hot path counts per batch, never per event: a labelled `.labels().inc()` costs about a
microsecond, so the fold host adds its counts up in a dict and increments once per label set.

Label cardinality is bounded: never a run id. Projects, flows and step keys come from the code
and the declared flows (`.steplog/flows.json`, the workflows of an app), not from data; in case
a service makes them up anyway (a step key with an order id in it), `BoundedLabels` keeps the
first values seen per scope and folds the rest into `OTHER`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Final, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from steplog.errors import SettingsError

__all__ = [
    "CONTENT_TYPE",
    "OTHER",
    "BoundedLabels",
    "Metrics",
    "SenderStatsSource",
    "exposition",
    "metrics",
    "register_sender",
    "reset",
    "serve_metrics",
]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
OTHER: Final = "_other"
"""The label value of every value past a scope's bound (`BoundedLabels`)."""

MAX_FLOWS_PER_PROJECT: Final = 500
MAX_STEPS_PER_FLOW: Final = 200
MAX_PROJECTS: Final = 100

_FAST_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0)
_INSERT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_START_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                         60.0, 300.0)


class BoundedLabels:
    """Label values kept to at most `bound` distinct values per scope: the first ones seen are
    themselves, the later ones `OTHER` (a series per value would otherwise grow without bound
    if a service put an id into a flow name or a step key). Not thread-safe: each user (the
    fold host) holds its own."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._seen: dict[tuple[str, ...], set[str]] = {}

    def __call__(self, scope: tuple[str, ...], value: str) -> str:
        seen = self._seen.setdefault(scope, set())
        if value in seen:
            return value
        if len(seen) >= self.bound:
            return OTHER
        seen.add(value)
        return value


class Metrics:
    """Every metric of a Steplog process, in one registry (README lists their meaning)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, fds
        r = self.registry
        # processors
        self.events_consumed = Counter(
            "steplog_events_consumed", "Messages consumed by the processors, by topic.",
            ["topic"], registry=r)
        self.events_folded = Counter(
            "steplog_events_folded", "Events folded into a run's state for the first time "
            "(re-deliveries not counted), by event type.", ["type"], registry=r)
        self.dead_letters = Counter(
            "steplog_dead_letters", "Messages and rows sent to the dead-letter topic, by the "
            "topic they were read from and the reason's category.", ["topic", "reason"],
            registry=r)
        self.fold_batch_seconds = Histogram(
            "steplog_fold_batch_seconds", "Time to decode, fold, carry out and store one batch "
            "of the events topic (its rows are written later).", buckets=_FAST_BUCKETS,
            registry=r)
        self.consumer_lag = Gauge(
            "steplog_consumer_lag", "Messages past the processors group's committed offset, "
            "by topic and partition.", ["topic", "partition"], registry=r)
        self.clickhouse_insert_seconds = Histogram(
            "steplog_clickhouse_insert_seconds", "Time of one insert into a projection table "
            "(runs: with run_list).", ["table"], buckets=_INSERT_BUCKETS, registry=r)
        self.clickhouse_insert_failures = Counter(
            "steplog_clickhouse_insert_failures", "Inserts into a projection table that failed "
            "(each is retried with backoff).", ["table"], registry=r)
        self.runs_started = Counter(
            "steplog_runs_started", "Runs that started (their run.started or first step was "
            "folded).", ["project", "flow"], registry=r)
        self.runs_ended = Counter(
            "steplog_runs_ended", "Runs that ended, by final status (completed, failed, "
            "cancelled).", ["project", "flow", "status"], registry=r)
        self.steps_ended = Counter(
            "steplog_steps_ended", "Steps that reached a final status (completed, failed, "
            "skipped).", ["project", "flow", "step", "status"], registry=r)
        self.timers_pending = Gauge(
            "steplog_timers_pending", "Timers this processors process holds (sleeps, retries, "
            "scheduled starts, wait timeouts).", registry=r)
        self.runs_waiting = Gauge(
            "steplog_runs_waiting", "Runs parked in wait_for_event on the signals partitions "
            "this processors process holds.", registry=r)
        # workers
        self.schedule_to_start_seconds = Histogram(
            "steplog_workflow_schedule_to_start_seconds", "From a start_run command to the "
            "first pass of its run on a worker (its first step).", ["flow"],
            buckets=_START_BUCKETS, registry=r)
        self.worker_steps_in_flight = Gauge(
            "steplog_worker_steps_in_flight", "Run passes executing on this worker (each "
            "executes its run's next steps).", ["app"], registry=r)


_lock = threading.Lock()
_current = Metrics()


def metrics() -> Metrics:
    """This process's metrics."""
    return _current


def reset() -> Metrics:
    """Start this process's metrics afresh (tests: no count leaks between them)."""
    global _current
    with _lock:
        _current = Metrics()
        return _current


def exposition(registry: CollectorRegistry | None = None) -> bytes:
    """The Prometheus text format of `registry` (this process's by default)."""
    return generate_latest(registry if registry is not None else metrics().registry)


def serve_metrics(host: str, port: int) -> None:
    """Serve this process's metrics on host:port (GET /metrics) from a daemon thread, for a
    process without a web server of its own (a worker); SettingsError if it cannot listen."""
    try:
        start_http_server(port, host, registry=metrics().registry)
    except OSError as exc:
        raise SettingsError(
            f"metrics endpoint {host}:{port}: cannot listen ({exc.strerror or exc}); choose "
            "another --metrics-port / STEPLOG_WORKER_METRICS_PORT"
        ) from exc


# --------------------------------------------------------------------------- the SDK's sender


class SenderStats(Protocol):
    """What `EventSender.stats()` answers (steplog.producers.send_buffer.SenderStats)."""

    @property
    def sent(self) -> int: ...
    @property
    def retried(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def buffered_bytes(self) -> int: ...
    @property
    def spooled(self) -> int: ...
    @property
    def spool_bytes(self) -> int: ...


class SenderStatsSource(Protocol):
    """A `steplog.Client` or an `EventSender`: anything with their `stats()`."""

    def stats(self) -> SenderStats: ...


class _SenderCollector(Collector):
    """Reads the senders' counters at each scrape (each sender keeps counting on its own), one
    series per sender (label `sender`)."""

    def __init__(self) -> None:
        self.sources: dict[str, SenderStatsSource] = {}

    def collect(self) -> Iterator[Metric]:
        stats = {name: source.stats() for name, source in self.sources.items()}
        for field, meaning in (
            ("sent", "Events Kafka acknowledged."),
            ("retried", "Deliveries that failed and were tried again."),
            ("dropped", "Events discarded undelivered (buffer full, or left at close)."),
            ("failed", "Events Kafka refused for good."),
            ("spooled", "Events written to the disk spool (Client(spool_dir=...))."),
        ):
            counter = CounterMetricFamily(f"steplog_sdk_events_{field}", meaning,
                                          labels=["sender"])
            for name, counts in stats.items():
                counter.add_metric([name], getattr(counts, field))
            yield counter
        gauge = GaugeMetricFamily("steplog_sdk_buffer_bytes", "Bytes of events waiting to be "
                                  "delivered.", labels=["sender"])
        for name, counts in stats.items():
            gauge.add_metric([name], counts.buffered_bytes)
        yield gauge
        spool = GaugeMetricFamily("steplog_sdk_spool_bytes", "Bytes of events in the disk "
                                  "spool, waiting to be delivered.", labels=["sender"])
        for name, counts in stats.items():
            spool.add_metric([name], counts.spool_bytes)
        yield spool


_sender_collectors: weakref.WeakKeyDictionary[CollectorRegistry, _SenderCollector] = (
    weakref.WeakKeyDictionary()
)
"""The one collector of each registry that has senders (two would repeat the metric names)."""


def register_sender(
    source: SenderStatsSource, registry: CollectorRegistry = REGISTRY, *, name: str = "default"
) -> None:
    """Expose the sender stats of `source` (a `steplog.Client`, or an `EventSender`) as the
    steplog_sdk_* metrics of the application's `registry` (prometheus-client's default one
    unless given), with the label sender=`name` (unique per registry: ValueError otherwise).
    The stats are read at each scrape."""
    with _lock:
        collector = _sender_collectors.get(registry)
        if collector is None:
            collector = _sender_collectors[registry] = _SenderCollector()
            registry.register(collector)
        if name in collector.sources:
            raise ValueError(f"register_sender: a sender named {name!r} is already registered "
                             "in this registry; give each sender its own name=")
        collector.sources[name] = source
