"""The README's main job: the local stack on the embedded defaults, with demo events.

Starts the Kafka broker (unless one already answers from this data dir), ensures the topics and
the ClickHouse tables, sends a few checkout runs through the SDK's sender, reads them back from
the log, mirrors them into the `events` table and shows them with SQL. A broker it started it
also stops; the data stays in the data dir for the next run.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from steplog.broker import LocalBroker
from steplog.producers.sender import EventSender
from steplog.projections.clickhouse import open_clickhouse
from steplog.projections.events_table import event_row, insert_events
from steplog.projections.log_reader import read_log
from steplog.projections.migrations import migrate
from steplog.schemas.codec import decode_event
from steplog.schemas.events import (
    ErrorInfo,
    Event,
    StepCompleted,
    StepCompletedPayload,
    StepFailed,
    StepFailedPayload,
    StepSkipped,
    StepStarted,
    StepStartedPayload,
    new_event_id,
)
from steplog.settings import Settings
from steplog.topics import ensure_topics, topic_specs


def checkout_run(project: str, number: int) -> list[Event]:
    """One instrumented checkout: every third card is declined, every fourth receipt skipped."""
    run_id = f"demo-{datetime.now(UTC):%H%M%S}-{number}"
    events: list[Event] = []

    def common(step_key: str) -> dict[str, Any]:
        return dict(
            event_id=new_event_id(),
            project=project,
            flow="checkout",
            run_id=run_id,
            step_key=step_key,
            ts=datetime.now(UTC),
            seq=len(events),
        )

    for step_key in ("reserve-stock", "charge-card"):
        events.append(StepStarted(**common(step_key), payload=StepStartedPayload()))
        if step_key == "charge-card" and number % 3 == 2:
            declined = ErrorInfo(type="CardDeclined", message="card declined: insufficient funds")
            events.append(StepFailed(**common(step_key), payload=StepFailedPayload(error=declined)))
            return events
        done = StepCompletedPayload(output={"ok": True, "run": number}, duration_ms=12.5)
        events.append(StepCompleted(**common(step_key), payload=done))
    if number % 4 == 3:
        events.append(StepSkipped(**common("send-receipt")))
    else:
        events.append(StepStarted(**common("send-receipt"), payload=StepStartedPayload()))
        events.append(StepCompleted(**common("send-receipt")))
    return events


def run_demo(settings: Settings, *, runs: int, out: TextIO) -> None:
    def say(line: str) -> None:
        print(line, file=out, flush=True)

    broker = LocalBroker.from_settings(settings)
    started_here = not broker.status().running
    began = time.perf_counter()
    broker.start()
    say(f"Kafka {settings.kafka_version} on {broker.bootstrap} "
        f"({'started' if started_here else 'already running'}, {time.perf_counter() - began:.1f}s)")
    try:
        _demo_on_stack(settings, runs, say)
    finally:
        if started_here:
            broker.stop()
            say("Kafka broker stopped (data kept in "
                f"{broker.data_dir}; `steplog broker start` keeps one running)")


def _demo_on_stack(settings: Settings, runs: int, say: Callable[[str], None]) -> None:
    for report in asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings))):
        say(f"  topic {report.name:<22} {report.partitions} partitions, {report.outcome}")
    client = open_clickhouse(settings.clickhouse_dsn)
    migrate(client, settings.clickhouse_database)
    say(f"ClickHouse tables ready in {settings.clickhouse_dsn} "
        f"(database {settings.clickhouse_database})")

    sent = [event for number in range(runs) for event in checkout_run(settings.project, number)]
    sender = EventSender(settings.kafka_bootstrap, settings.topics.events,
                         max_event_bytes=settings.max_event_bytes)
    for event in sent:
        sender.send_event(event)
    sender.flush(timeout=60)
    sender.close()
    stats = sender.stats()
    say(f"sent {len(sent)} events for {runs} checkout runs: {stats.sent} acknowledged, "
        f"{stats.retried} retried, {stats.dropped} dropped")

    ours = {event.event_id for event in sent}
    rows = []
    total = 0

    async def read_back() -> None:
        nonlocal total
        async for record in read_log(settings.kafka_bootstrap, settings.topics.events):
            total += 1
            event = decode_event(record.value, max_bytes=settings.max_event_bytes)
            if event.event_id in ours:
                rows.append(event_row(event, record.partition, record.offset))

    asyncio.run(read_back())
    say(f"read back {len(rows)} of them from {settings.topics.events} "
        f"({total} events on the log in all), each validated")
    insert_events(client, settings.clickhouse_database, rows)

    by_status = Counter(row[1] for row in rows)
    say("by type: " + ", ".join(f"{kind} {count}" for kind, count in sorted(by_status.items())))
    query = (
        f"SELECT run_id, step_key, type, JSONExtractString(payload, 'error', 'message') AS error "
        f"FROM {settings.clickhouse_database}.events FINAL "
        f"WHERE event_id IN {{ids:Array(String)}} ORDER BY run_id, seq"
    )
    say("SQL> SELECT run_id, step_key, type, error FROM events ... ORDER BY run_id, seq")
    result = client.query(query, parameters={"ids": sorted(ours)})
    for run_id, step_key, kind, error in result.result_rows:
        say(f"  {run_id:<22} {step_key:<14} {kind:<15} {error}")

