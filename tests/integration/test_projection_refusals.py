"""A row the engine refuses for good never halts the writes: it is isolated, dead-lettered with
the engine's message, and everything around it lands (projections/writer.py, refusals.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from clickhouse_connect.driver.client import Client

from steplog.errors import ClickHouseError
from steplog.processors.projection_batch import ProjectionBatch
from steplog.producers.sender import EventSender
from steplog.projections.log_reader import read_log
from steplog.projections.writer import ProjectionWriter, TableRows
from steplog.schemas.codec import decode_dead_letter
from steplog.schemas.events import Event, StepCompleted, StepStarted, new_event_id
from steplog.settings import Settings
from steplog.server.stack import processor_config
from steplog.topics import topic_partitions
from tests.conftest import RunningProcessors, wait_for

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def step_events(project: str, run_id: str) -> list[Event]:
    envelope: dict[str, Any] = dict(project=project, flow="checkout", run_id=run_id,
                                    step_key="charge", ts=T0)
    return [StepStarted(event_id=new_event_id(), seq=0, **envelope),
            StepCompleted(event_id=new_event_id(), seq=1, **envelope)]


def events_rows(events: list[Event]) -> TableRows:
    batch = ProjectionBatch()
    for offset, event in enumerate(events):
        batch.add_event(event, 0, offset)
    return batch.table_rows()["events"]


def test_the_writer_isolates_refused_rows_and_writes_the_rest(
    clickhouse: Client, settings: Settings
) -> None:
    database = settings.clickhouse_database
    clickhouse.command(
        f"ALTER TABLE {database}.events ADD CONSTRAINT no_poison CHECK run_id != 'poison'"
    )
    events = [e for n in range(500) for e in step_events(settings.project, f"run-{n}")]
    events[321:323] = step_events(settings.project, "poison")
    rows = events_rows(events)
    overflowing = list(rows.rows[77])
    overflowing[rows.columns.index("attempt")] = 2**32  # UInt32 cannot hold it
    rows.rows[77] = overflowing

    result = ProjectionWriter(clickhouse, database).write({"events": rows})

    assert result.written == 997
    refused = sorted(result.refused, key=lambda row: int(row.values["log_offset"]))
    assert [int(row.values["log_offset"]) for row in refused] == [77, 321, 322]
    assert refused[0].column == "attempt"
    assert all("VIOLATED_CONSTRAINT" in row.reason for row in refused[1:])
    assert clickhouse.command(f"SELECT count() FROM {database}.events") == 997


def test_a_table_dropped_under_the_writer_is_recreated_for_the_retry(
    clickhouse: Client, settings: Settings
) -> None:
    database = settings.clickhouse_database
    writer = ProjectionWriter(clickhouse, database)
    clickhouse.command(f"DROP TABLE {database}.events")
    batch = {"events": events_rows(step_events(settings.project, "run-1"))}
    with pytest.raises(ClickHouseError, match="does not exist"):
        writer.write(batch)
    assert writer.write(batch).written == 2
    assert clickhouse.command(f"SELECT count() FROM {database}.events") == 2


def committed_lag(settings: Settings) -> int:
    """Events of the topic past the processors' committed offsets."""

    async def lag() -> int:
        topic = settings.topics.events
        partitions = [TopicPartition(topic, p)
                      for p in await topic_partitions(settings.kafka_bootstrap, topic)]
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                                    group_id=processor_config(settings).app_id,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            ends = await consumer.end_offsets(partitions)
            return sum([ends[tp] - (await consumer.committed(tp) or 0) for tp in partitions])
        finally:
            await consumer.stop()

    return asyncio.run(lag())


def test_a_refused_row_is_dead_lettered_and_ingestion_goes_on(
    processors: RunningProcessors,
) -> None:
    settings = processors.settings
    database = settings.clickhouse_database
    processors.sql.command(
        f"ALTER TABLE {database}.events ADD CONSTRAINT no_poison CHECK run_id != 'poison'"
    )
    sender = EventSender(settings.kafka_bootstrap, settings.topics.events)
    sent = [e for run_id in ("before", "poison", "canary")
            for e in step_events(settings.project, run_id)]
    for event in sent:
        sender.send_event(event)
    assert sender.flush(timeout=60), sender.stats()
    sender.close()

    def landed() -> bool:
        return processors.sql.command(
            "SELECT count() FROM steps_current WHERE run_id = 'canary' AND status = 'completed'"
        ) == 1

    wait_for(landed, what="the canary run behind the refused rows")
    wait_for(lambda: committed_lag(settings) == 0, what="the lag back to 0")
    assert processors.sql.query(
        "SELECT DISTINCT run_id FROM events ORDER BY run_id"
    ).result_rows == [("before",), ("canary",)]
    # The run and step rows of the poison run were not refused: only its events rows.
    assert processors.sql.command(
        "SELECT status FROM steps_current WHERE run_id = 'poison'") == "completed"

    async def dead_letters() -> list[Any]:
        return [decode_dead_letter(record.value)
                async for record in read_log(settings.kafka_bootstrap, settings.topics.dlq)]

    letters = asyncio.run(dead_letters())
    assert len(letters) == 2
    for letter in letters:
        assert letter.source_topic == settings.topics.events
        assert "ClickHouse refused its row in the events table" in letter.reason
        assert "VIOLATED_CONSTRAINT" in letter.reason
        assert base64.b64decode(letter.key_b64 or "") == b"poison"
    refused_rows = [json.loads(base64.b64decode(letter.value_b64)) for letter in letters]
    assert {row["event_id"] for row in refused_rows} == {
        e.event_id for e in sent if e.run_id == "poison"}
    assert {letter.offset for letter in letters} == {row["log_offset"] for row in refused_rows}
