"""Replay reads exactly what live reads: over a log holding every kind of bad record (a
tombstone, garbage, an oversized record, out-of-range values, a key that is not the run id, an
unknown type, a newer schema version), the live processors dead-letter each one and go on, and
a replay skips the same records and rebuilds the same rows."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from steplog.projections.log_reader import read_log
from steplog.schemas.codec import encode
from steplog.schemas.events import StepCompleted, StepCompletedPayload, StepStarted, new_event_id
from steplog.settings import Settings
from tests.conftest import replay_dry_run, start_processors, wait_for


def good_event(project: str, run_id: str, seq: int) -> dict[str, Any]:
    event = (StepStarted if seq == 0 else StepCompleted)(
        event_id=new_event_id(), project=project, flow="checkout", run_id=run_id,
        step_key="charge", ts=datetime(2026, 12, 1, 12, 0, seq, tzinfo=UTC), seq=seq,
    )
    fields: dict[str, Any] = json.loads(encode(event))
    return fields


def bad_records(settings: Settings) -> list[tuple[bytes, bytes | None]]:
    """(key, value) of every kind of record the processors cannot use."""
    project = settings.project

    def raw(run_id: str, **changes: Any) -> tuple[bytes, bytes]:
        return run_id.encode(), json.dumps(good_event(project, run_id, 1) | changes).encode()

    too_big = StepCompleted(
        event_id=new_event_id(), project=project, flow="checkout", run_id="big", step_key="s",
        ts=datetime(2026, 12, 1, tzinfo=UTC),
        payload=StepCompletedPayload(output="x" * (settings.max_event_bytes + 1)),
    )
    return [
        (b"tomb", None),
        (b"garbage", b"\x00\xff not json at all"),
        (b"big", encode(too_big, max_bytes=2 * settings.max_event_bytes)),
        raw("attempt-overflow", attempt=2**32),
        raw("seq-overflow", seq=2**64),
        (b"not-the-run-id", raw("keyed-wrong")[1]),
        raw("unknown-type", type="step.exploded"),
        raw("next-version", schema_version=2),
        (b"infinite", json.dumps(good_event(project, "infinite", 1), separators=(",", ":"))
         .replace('"duration_ms":null', '"duration_ms":1e400').encode()),
    ]


async def produce(settings: Settings, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap,
                                max_request_size=4 * settings.max_event_bytes)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(settings.topics.events, value, key=key)
    finally:
        await producer.stop()


def test_replay_skips_what_live_dead_letters_and_rebuilds_the_same_rows(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings
    project = settings.project
    good: list[tuple[bytes, bytes | None]] = [
        (f"run-{n}".encode(), json.dumps(good_event(project, f"run-{n}", seq)).encode())
        for n in range(20) for seq in (0, 1)
    ]
    bad = bad_records(settings)
    canary: list[tuple[bytes, bytes | None]] = [(b"canary", json.dumps(good_event(project, "canary", seq)).encode())
              for seq in (0, 1)]
    running = start_processors(settings, tmp_path / "processors.log")
    try:
        asyncio.run(produce(settings, good[:20] + bad + good[20:] + canary))
        wait_for(lambda: running.sql.command(
            "SELECT count() FROM steps_current WHERE run_id = 'canary' AND status = 'completed'"
        ) == 1, what="the canary run behind the bad records")
        wait_for(lambda: running.sql.command(
            "SELECT count() FROM steps_current WHERE status = 'completed'") == 21,
            what="every good run")
    finally:
        running.stop()

    async def dead_letters() -> int:
        return len([r async for r in read_log(settings.kafka_bootstrap, settings.topics.dlq)])

    letters = asyncio.run(dead_letters())
    assert letters >= len(bad)

    dry_run = replay_dry_run(settings, 2, ("events", "runs", "steps", "flows"))
    counts = re.search(r"(\d+) invalid skipped, (\d+) rows refused", dry_run)
    assert counts is not None, dry_run
    # Every record live dead-lettered, replay skipped (or its rows were refused again).
    assert int(counts.group(1)) + int(counts.group(2)) == letters, dry_run
