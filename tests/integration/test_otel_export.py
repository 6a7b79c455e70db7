"""`steplog otel-export` (steplog/server/otel_export.py) against the real broker and a real
OTLP/HTTP receiver on 127.0.0.1: a run is one trace with a span per step attempt under the run's
root span, a failed attempt carries its error as an `exception` event, and a restarted exporter
sends nothing it had exported and committed while still finishing the runs it had open."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from steplog.kafka import producer
from steplog.projections.run_spans import run_span_id, step_span_id, trace_id
from steplog.schemas.codec import encode
from steplog.schemas.events import (
    Event,
    RunCompleted,
    RunStarted,
    StepCompleted,
    StepStarted,
)
from steplog.settings import Settings, child_environment
from tests.conftest import free_port, wait_for
from tests.span_runs import STACK, envelope, ns, retried_run

pytestmark = pytest.mark.integration


@dataclass
class Collector:
    """An OTLP/HTTP traces receiver: keeps every span it is sent, with its resource's
    attributes."""

    port: int = field(default_factory=free_port)
    spans: list[tuple[dict[str, str], Span]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    async def traces(self, request: web.Request) -> web.Response:
        body = ExportTraceServiceRequest.FromString(await request.read())
        with self.lock:
            for resource_spans in body.resource_spans:
                resource = {a.key: a.value.string_value
                            for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    self.spans += [(resource, span) for span in scope_spans.spans]
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def received(self) -> list[tuple[dict[str, str], Span]]:
        with self.lock:
            return list(self.spans)


@pytest.fixture
def collector() -> Iterator[Collector]:
    collector = Collector()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    app = web.Application()
    app.router.add_post("/v1/traces", collector.traces)
    runner = web.AppRunner(app)

    async def serve() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", collector.port).start()

    asyncio.run_coroutine_threadsafe(serve(), loop).result(timeout=30)
    try:
        yield collector
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def send(settings: Settings, events: list[Event]) -> None:
    async def produce() -> None:
        client = producer(settings.kafka_bootstrap)
        await client.start()
        try:
            for event in events:
                await client.send_and_wait(settings.topics.events, encode(event),
                                           key=event.run_id.encode())
        finally:
            await client.stop()

    asyncio.run(produce())


def start_exporter(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-c", "from steplog.server.entry import main; main()",
             "otel-export"],
            env=child_environment(settings, every_setting=True), stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop(exporter: subprocess.Popen[bytes], log_path: Path) -> None:
    exporter.send_signal(signal.SIGTERM)
    code = exporter.wait(timeout=60)
    assert code == 0, log_path.read_text(errors="replace")[-3000:]


def by_id(spans: list[tuple[dict[str, str], Span]]) -> dict[int, Span]:
    return {int.from_bytes(span.span_id, "big"): span for _, span in spans}


def attributes(span: Span) -> dict[str, object]:
    return {a.key: a.value.string_value or a.value.int_value for a in span.attributes}


def test_runs_become_traces_and_a_restart_exports_each_span_once(
    topics: Settings, collector: Collector, tmp_path: Path
) -> None:
    settings = topics.model_copy(update={"otel_endpoint": collector.endpoint,
                                         "otel_service_name": "shop-steplog"})
    log_path = tmp_path / "otel-export.log"
    # Run b is open when the exporter stops: step `a` done, step `b` started.
    send(settings, [*retried_run("run-a"),
                    RunStarted(**envelope("run-b", 0, 0)),
                    StepStarted(**envelope("run-b", 1, 1), step_key="a"),
                    StepCompleted(**envelope("run-b", 2, 2), step_key="a"),
                    StepStarted(**envelope("run-b", 3, 3), step_key="b")])
    exporter = start_exporter(settings, log_path)
    try:
        wait_for(lambda: len(collector.received()) >= 5, timeout=60,
                 what="run a's four spans and run b's step a")
    finally:
        stop(exporter, log_path)

    received = collector.received()
    assert {resource["service.name"] for resource, _ in received} == {"shop-steplog"}
    spans = by_id(received)
    root = spans[run_span_id("run-a")]
    first = spans[step_span_id("run-a", "charge", 1)]
    second = spans[step_span_id("run-a", "charge", 2)]
    ship = spans[step_span_id("run-a", "ship", 1)]
    assert {int.from_bytes(s.trace_id, "big") for s in (root, first, second, ship)} == {
        trace_id("run-a")
    }
    assert root.parent_span_id == b"" and root.name == "checkout"
    assert {s.parent_span_id for s in (first, second, ship)} == {root.span_id}
    assert [(s.start_time_unix_nano, s.end_time_unix_nano) for s in (root, first, second, ship)] \
        == [(ns(0), ns(7)), (ns(1), ns(2)), (ns(3), ns(4.5)), (ns(5), ns(6))]
    assert attributes(first) == {
        "steplog.project": "shop", "steplog.flow": "checkout", "steplog.run_id": "run-a",
        "steplog.step_key": "charge", "steplog.attempt": 1, "steplog.status": "retrying",
        "steplog.retry_at": "2026-03-01T12:00:03+00:00",
    }
    assert first.status.code == Status.STATUS_CODE_ERROR
    [error] = first.events
    assert (error.name, error.time_unix_nano) == ("exception", ns(2))
    assert attributes(error) == {"exception.type": "TimeoutError",
                                 "exception.message": "gateway", "exception.stacktrace": STACK}
    assert second.events == [] and second.status.code == Status.STATUS_CODE_OK
    assert attributes(root)["steplog.status"] == "completed"

    # The restarted exporter re-reads run b from its first event (the commit held back there)
    # but sends only what the new events end.
    exporter = start_exporter(settings, log_path)
    try:
        send(settings, [StepCompleted(**envelope("run-b", 4, 4), step_key="b"),
                        RunCompleted(**envelope("run-b", 5, 5))])
        wait_for(lambda: run_span_id("run-b") in by_id(collector.received()), timeout=60,
                 what="run b's root span")
    finally:
        stop(exporter, log_path)
    received = collector.received()
    assert len(received) == len(by_id(received)) == 7, [s.name for _, s in received]
    spans = by_id(received)
    assert (spans[run_span_id("run-b")].start_time_unix_nano,
            spans[step_span_id("run-b", "b", 1)].start_time_unix_nano) == (ns(0), ns(3))
