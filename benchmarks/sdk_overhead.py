"""What `run.step()` costs the code it wraps, next to an OpenTelemetry span, in one process.

Each measurement times `--steps` calls in a loop, `--rounds` times, and reports the median
round in µs per call:

- bare:    the no-op function called directly (the loop's own cost);
- otel:    `tracer.start_as_current_span()` around the no-op, OpenTelemetry SDK with a
           BatchSpanProcessor and an exporter that discards the spans;
- steplog: `run.step(key, noop)` (two events: step.started and step.completed) with the client
           sending to a real Kafka broker, started here on a free loopback port in a temporary
           directory and stopped at the end;
- steplog block: `with run.step(key): noop()`, the same two events from a context manager;
- steplog+metadata: the same with two metadata entries (redaction and JSON per call);
- steplog, discarding sink: run.step with a sink that drops the bytes, i.e. the SDK's own work
  (ids, timestamps, encoding) without the sender's buffer and delivery thread.

The Steplog figures are wall time of the calling thread while the sender's thread delivers in
the background: on CPython they share the GIL, so that delivery work shows up here too, as it
would in a service. Between rounds (untimed) the client is flushed, so that every round starts
with an empty buffer and every event is delivered; the delivery counters are printed.

    .venv/bin/python benchmarks/sdk_overhead.py --rounds 7 --steps 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import shlex
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from steplog import Client
from steplog.server.broker import LocalBroker
from steplog.producers.sink import MemorySink
from steplog.settings import load_settings
from steplog.topics import ensure_topics, topic_specs


class DiscardingSink(MemorySink):
    """Drops every event: what is left of run.step is the SDK's own work."""

    def send(self, key: bytes, value: bytes) -> None:
        pass


class DiscardingExporter(SpanExporter):
    """Exports nothing, so that OpenTelemetry is measured without any I/O of its own."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def noop() -> None:
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20_000, help="calls per round")
    args = parser.parse_args()
    base = load_settings()

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(
        f"machine: nproc={os.cpu_count()} python={platform.python_version()} "
        f"kafka={base.kafka_version} heap={base.broker_heap}"
    )

    with tempfile.TemporaryDirectory(prefix="steplog-sdk-bench-") as scratch:
        broker = LocalBroker(
            Path(scratch) / "kafka",
            _free_port(),
            heap=base.broker_heap,
            version=base.kafka_version,
            cache_dir=base.cache_dir,
        )
        broker.start()
        try:
            settings = load_settings(kafka_bootstrap=broker.bootstrap, topic_prefix="bench.")
            asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
            _measure(args.rounds, args.steps, settings.kafka_bootstrap, settings.topics.events)
        finally:
            broker.stop()


def _measure(rounds: int, steps: int, bootstrap: str, topic: str) -> None:
    exporter = DiscardingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("sdk_overhead")

    def otel_span() -> None:
        with tracer.start_as_current_span("charge-card"):
            noop()

    client = Client(project="bench", bootstrap=bootstrap, topic=topic, on_error=_print_error)
    run = client.run("checkout", run_id="bench-run")
    run.step("warm-up", noop)  # starts the sender's thread and connects before timing
    client.flush()

    def steplog_step() -> None:
        run.step("charge-card", noop)

    def steplog_block() -> None:
        with run.step("charge-card"):
            noop()

    def steplog_step_metadata() -> None:
        run.step("charge-card", noop, metadata={"order_id": "ord_1042", "items": 3})

    discarding = Client(project="bench", sink=DiscardingSink()).run("checkout", run_id="bench")

    def steplog_step_discarded() -> None:
        discarding.step("charge-card", noop)

    # Interleaved rounds, so that a noisy moment on the machine hits every contender alike.
    contenders: dict[str, Callable[[], None]] = {
        "bare no-op": noop,
        "otel span (BatchSpanProcessor)": otel_span,
        "steplog run.step": steplog_step,
        "steplog with run.step (block)": steplog_block,
        "steplog run.step + metadata": steplog_step_metadata,
        "steplog run.step, sink discards": steplog_step_discarded,
    }
    timings: dict[str, list[float]] = {name: [] for name in contenders}
    flushes: list[float] = []
    for _ in range(rounds):
        for name, call in contenders.items():
            timings[name].append(_time_round(call, steps))
            # Not timed: a round's events are delivered before the next round, so that every
            # round starts with an empty buffer and none is dropped (a loop of nothing but
            # steps produces events faster than one producer delivers them).
            began = time.perf_counter()
            client.flush(timeout=300)
            if call is steplog_step:
                flushes.append(time.perf_counter() - began)
            provider.force_flush()

    medians = {name: statistics.median(values) for name, values in timings.items()}
    print(f"rounds: {rounds} x {steps} calls; median round, µs per call (min-max)")
    for name, values in timings.items():
        print(f"  {name:<34} {medians[name]:6.2f}  ({min(values):.2f}-{max(values):.2f})")
    otel = medians["otel span (BatchSpanProcessor)"]
    ours = medians["steplog run.step"]
    block = medians["steplog with run.step (block)"]
    print(f"ratio steplog/otel: {ours / otel:.2f}  (steplog {ours:.2f} µs, otel {otel:.2f} µs)")
    print(f"ratio steplog block/otel: {block / otel:.2f}")

    stats = client.stats()
    per_round = 2 * steps
    print(
        f"steplog delivery: sent={stats.sent} dropped={stats.dropped} failed={stats.failed} "
        f"retried={stats.retried}; flush after a round of {per_round} events: median "
        f"{statistics.median(flushes):.2f} s (untimed, between rounds)"
    )
    print(
        f"steplog buffer bound: {client_buffer_bound(client) / 2**20:.0f} MiB "
        "(oldest events dropped beyond it)"
    )
    client.close()
    provider.shutdown()
    print(f"otel spans exported: {exporter.spans}")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS of this process: {peak_kib / 1024:.0f} MiB")


def client_buffer_bound(client: Client) -> int:
    return int(getattr(client.sink, "max_buffer_bytes", 0))


def _time_round(call: Callable[[], None], steps: int) -> float:
    began = time.perf_counter_ns()
    for _ in range(steps):
        call()
    return (time.perf_counter_ns() - began) / steps / 1000


def _print_error(exc: BaseException) -> None:
    print(f"send error: {exc!r}", file=sys.stderr)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


if __name__ == "__main__":
    main()
