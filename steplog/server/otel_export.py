"""`steplog otel-export`: runs and steps as OpenTelemetry traces, over OTLP/HTTP.

A consumer of the events topic in a group of its own (`<prefix>otel-export`), a fetched batch at
a time: fold each partition's events into spans (projections/run_spans.py: a run a trace, each
step attempt a span, errors as span events), export the spans the batch ended (retried with
backoff until the collector takes them), then commit. Its own process, not a task of the
processors: a collector that is down or slow stalls only this consumer (its lag grows, the
spans wait in the log), never the fold, the projections or the resumes; and the processors
need not carry the OpenTelemetry SDK (the optional `otel` extra).

What a commit says, per partition (the failure protocol):
- the offset is `PartitionSpans.hold_position`: the first event of the oldest run still open
  (within the hold), so a restart or the partition's next owner re-reads it and rebuilds the
  start of every open run and attempt;
- its metadata, `{"exported": N}`, says every span ended by an event before offset N was
  exported. A re-read folds those events again but exports only the spans ended at N or later:
  a span is never exported twice for what was exported and committed.
The commit comes after the export. A process that dies between the two leaves the batch
uncommitted and its spans are exported again by the next reader, with the same trace and span
ids (derived from the run, step key and attempt): at least once, never lost. The other order
would lose the spans of a batch committed and not exported.

An event that does not decode is skipped and logged: the processors dead-letter it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final
from urllib.parse import unquote, urlparse

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event as SpanEvent
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from steplog.errors import InvalidEventError, SettingsError
from steplog.kafka import access, admin_client, start
from steplog.kafka import consumer as kafka_consumer
from steplog.projections.run_spans import PartitionSpans, SpanRecord, SpanStatus
from steplog.schemas.codec import decode_event
from steplog.settings import Settings

__all__ = ["OtelExport", "otel_export_group", "otlp_exporter", "readable_span", "run_otel_export"]

log = logging.getLogger("steplog.otel")

_SCOPE: Final = InstrumentationScope("steplog")
_POLL_MS: Final = 200
_BATCH: Final = 5_000
_RETRY_FIRST_S: Final = 0.5
_RETRY_MAX_S: Final = 30.0
MAX_OPEN_RUNS: Final = 10_000
"""Open runs remembered per partition (a few hundred bytes each)."""
HOLD: Final = timedelta(hours=1)
"""How long an open run holds the commit back (`PartitionSpans.hold_position`)."""


def otel_export_group(settings: Settings) -> str:
    """The exporter's consumer group: its offsets are the spans', not the projections'."""
    return f"{settings.topic_prefix}otel-export"


def parse_headers(text: str) -> dict[str, str]:
    """STEPLOG_OTEL_HEADERS: `key=value` pairs, comma-separated, values URL-encoded (the
    format of OpenTelemetry's OTEL_EXPORTER_OTLP_HEADERS)."""
    headers: dict[str, str] = {}
    for number, pair in enumerate(text.split(","), 1):
        if not pair.strip():
            continue
        key, equals, value = pair.partition("=")
        if not equals or not key.strip():
            # The entry may be a credential pasted without its key: it is not echoed.
            raise SettingsError(
                f"STEPLOG_OTEL_HEADERS: expected key=value pairs separated by commas; entry "
                f"{number} has no '=' or no key"
            )
        headers[key.strip()] = unquote(value.strip())
    return headers


def otlp_exporter(settings: Settings) -> OTLPSpanExporter:
    """The OTLP/HTTP span exporter the settings name; a missing or malformed endpoint is a
    SettingsError naming the variable."""
    endpoint = settings.otel_endpoint
    if not endpoint:
        raise SettingsError("STEPLOG_OTEL_ENDPOINT is not set: give the collector's OTLP/HTTP "
                            "traces URL, e.g. http://127.0.0.1:4318/v1/traces")
    if urlparse(endpoint).scheme not in ("http", "https") or not urlparse(endpoint).netloc:
        raise SettingsError(f"STEPLOG_OTEL_ENDPOINT: expected an http(s):// URL such as "
                            f"http://127.0.0.1:4318/v1/traces, got {endpoint!r}")
    secret = settings.otel_headers
    headers = parse_headers(secret.get_secret_value() if secret else "")
    return OTLPSpanExporter(endpoint=endpoint, headers=headers)


def readable_span(record: SpanRecord, resource: Resource) -> ReadableSpan:
    """A span record as the OpenTelemetry SDK's exporters take it: its ids and times as the
    mapping gave them (a tracer would draw ids at random and read the clock)."""
    flags = TraceFlags(TraceFlags.SAMPLED)
    context = SpanContext(record.trace_id, record.span_id, is_remote=False, trace_flags=flags)
    parent = None
    if record.parent_span_id is not None:
        parent = SpanContext(record.trace_id, record.parent_span_id, is_remote=False,
                             trace_flags=flags)
    events = []
    for error in record.errors:
        attributes = {"exception.type": error.type, "exception.message": error.message}
        if error.stacktrace is not None:
            attributes["exception.stacktrace"] = error.stacktrace
        events.append(SpanEvent("exception", attributes, timestamp=error.at_ns))
    status = Status(StatusCode.OK)
    if record.status is SpanStatus.ERROR:
        status = Status(StatusCode.ERROR, record.errors[0].message if record.errors else None)
    return ReadableSpan(
        name=record.name, context=context, parent=parent, resource=resource,
        attributes=record.attributes, events=events, kind=SpanKind.INTERNAL, status=status,
        start_time=record.start_ns, end_time=record.end_ns, instrumentation_scope=_SCOPE,
    )


@dataclass
class _Partition:
    spans: PartitionSpans
    exported_through: int
    """Spans ended by events before this offset are exported (the commit's metadata)."""


class OtelExport:
    """Exports the events topic's runs as traces until `stop` is set (`run`)."""

    def __init__(self, settings: Settings, exporter: SpanExporter) -> None:
        self.settings = settings
        self.exporter = exporter
        self.resource = Resource.create({SERVICE_NAME: settings.otel_service_name})
        self.group = otel_export_group(settings)
        self.exported = 0
        """Spans exported since start."""
        self.skipped = 0
        """Records of the events topic that did not decode, since start."""
        self._partitions: dict[TopicPartition, _Partition] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Consume, export and commit until `stop` is set; the batch in hand is exported and
        committed first."""
        kafka = access(self.settings)
        admin = admin_client(kafka)
        consumer = kafka_consumer(
            kafka, group_id=self.group, enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=self.settings.max_event_bytes,
        )
        await start(admin, kafka)
        try:
            consumer.subscribe([self.settings.topics.events], listener=_Assignments(self, admin))
            await start(consumer, kafka)
            try:
                while not stop.is_set():
                    fetched = await consumer.getmany(timeout_ms=_POLL_MS, max_records=_BATCH)
                    if fetched and await self._export_batch(fetched, stop):
                        await self._commit(consumer, fetched)
            finally:
                await consumer.stop()
        finally:
            await admin.close()

    async def assigned(self, admin: Any, partitions: Iterable[TopicPartition]) -> None:
        """Start the state of newly assigned partitions from what their last commit says."""
        wanted = [tp for tp in partitions if tp not in self._partitions]
        if not wanted:
            return
        committed = await admin.list_consumer_group_offsets(self.group, partitions=wanted)
        for tp in wanted:
            position = committed.get(tp)
            offset = max(position.offset, 0) if position is not None else 0
            exported = _exported_through(position.metadata if position else "", offset)
            self._partitions[tp] = _Partition(
                PartitionSpans(max_open_runs=MAX_OPEN_RUNS, hold=HOLD), exported
            )

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        # The next owner rebuilds the open runs from the commit; a later owner here too.
        for tp in partitions:
            self._partitions.pop(tp, None)

    async def _export_batch(self, fetched: dict[TopicPartition, Sequence[Any]],
                            stop: asyncio.Event) -> bool:
        """Fold the batch and export the spans it ended; False if stopped before they were."""
        ended: list[SpanRecord] = []
        for tp, records in fetched.items():
            partition = self._partitions[tp]
            for record in records:
                try:
                    event = decode_event(record.value, max_bytes=self.settings.max_event_bytes)
                except InvalidEventError as exc:
                    self.skipped += 1
                    log.warning("%s[%d]@%d skipped (%d so far): %s", tp.topic, tp.partition,
                                record.offset, self.skipped, exc)
                    continue
                spans = partition.spans.apply(event, record.offset)
                if record.offset >= partition.exported_through:
                    ended += spans
        if ended and not await self._export(ended, stop):
            return False
        self.exported += len(ended)
        for tp, records in fetched.items():
            # A partition revoked during the export is its next owner's to re-read.
            if (owned := self._partitions.get(tp)) is not None:
                owned.exported_through = max(owned.exported_through, records[-1].offset + 1)
        return True

    async def _export(self, records: list[SpanRecord], stop: asyncio.Event) -> bool:
        """Export until the collector takes the spans (True) or `stop` is set (False)."""
        spans = [readable_span(record, self.resource) for record in records]
        delay = _RETRY_FIRST_S
        while True:
            # The exporter blocks (requests) and retries transient failures itself.
            result = await asyncio.to_thread(self.exporter.export, spans)
            if result is SpanExportResult.SUCCESS:
                return True
            log.warning("OTLP export of %d spans failed; again in %.1fs", len(spans), delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return False
            except TimeoutError:
                delay = min(delay * 2, _RETRY_MAX_S)

    async def _commit(self, consumer: Any, fetched: dict[TopicPartition, Sequence[Any]]) -> None:
        positions = {}
        for tp, records in fetched.items():
            if (partition := self._partitions.get(tp)) is None:
                continue
            offset = partition.spans.hold_position(records[-1].offset + 1)
            positions[tp] = (offset, json.dumps({"exported": partition.exported_through}))
        try:
            await consumer.commit(positions)
        except KafkaError as exc:
            # The group moved on (a rebalance during the export): the next reader exports the
            # same spans again, under the same ids.
            log.warning("commit of %s failed, their spans will be exported again: %r",
                        {tp.partition: end for tp, (end, _) in positions.items()}, exc)


def _exported_through(metadata: str, committed: int) -> int:
    """The `exported` offset of a commit's metadata; the committed offset itself when there is
    none (a group committed by no exporter)."""
    try:
        exported = json.loads(metadata)["exported"]
    except (ValueError, TypeError, KeyError):
        return committed
    return max(int(exported), committed) if isinstance(exported, int) else committed


class _Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, export: OtelExport, admin: Any) -> None:
        self.export = export
        self.admin = admin

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.export.revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.export.assigned(self.admin, assigned)


def run_otel_export(settings: Settings) -> None:
    """The `steplog otel-export` process: export until SIGINT or SIGTERM."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    exporter = otlp_exporter(settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        export = OtelExport(settings, exporter)
        log.info("exporting runs of %s as traces to %s (group %s)",
                 settings.topics.events, settings.otel_endpoint, export.group)
        await export.run(stop)
        log.info("stopped after exporting %d spans", export.exported)

    try:
        asyncio.run(main())
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]
