"""Finished runs leave the processors' state on the log's time (STEPLOG_STATE_RETENTION): their
changelog records become closed markers, then tombstones; a late event for one is dead-lettered
`run closed`; the projections keep the runs; replay rebuilds the same rows.

The events topic stamps records with the broker's time (LogAppendTime), so the log's time is
now: runs end now with a retention of 2 s (the test sends events until the log's time has
passed it), and one run ended two hours ago, past retention and horizon at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from steplog import kafka
from steplog.projections.log_reader import read_log
from steplog.schemas.codec import encode
from steplog.schemas.events import Event
from steplog.settings import Settings
from tests.conftest import replay_dry_run, start_processors, wait_for
from tests.unit.test_fold import Run

NOW = datetime.now(UTC)
RUNS = ("a0", "a1", "a2")


class RunNow(Run):
    """A run whose event times count from `base` (test_fold's start in 2025)."""

    def __init__(self, run_id: str, base: datetime = NOW) -> None:
        super().__init__(run_id)
        self.base = base

    def _envelope(self, t: float, seq: int | None, attempt: int) -> dict[str, Any]:
        return {**super()._envelope(t, seq, attempt), "ts": self.base + timedelta(seconds=t)}


async def produce(settings: Settings, events: Sequence[Event]) -> None:
    producer = kafka.producer(settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for event in events:  # one partition: one log time for every run of the test
            await producer.send_and_wait(
                settings.topics.events, encode(event), key=event.run_id.encode(), partition=0
            )
    finally:
        await producer.stop()


def changelog(settings: Settings) -> dict[bytes, bytes | None]:
    """The newest record of each key in partition 0 of the runs' changelog."""

    async def read() -> dict[bytes, bytes | None]:
        topic = f"{settings.processors_group}-runs-changelog"
        return {r.key or b"": r.value async for r in read_log(
            settings.kafka_bootstrap, topic, partitions=[0])}

    return asyncio.run(read())


def key(run_id: str) -> bytes:
    return f"acme\x00checkout\x00{run_id}".encode()


def test_finished_runs_leave_the_state_and_late_events_are_closed(
    stack_settings: Settings, tmp_path: Path
) -> None:
    settings = stack_settings.model_copy(
        update={"state_retention": "2s", "state_closed_horizon": "1h"}
    )
    runs = {run_id: RunNow(run_id) for run_id in RUNS}
    old = RunNow("z", NOW - timedelta(hours=2))
    ticks = RunNow("b")
    first: list[Event] = [r.run_started(0) for r in runs.values()]
    first += [r.run_completed(0) for r in runs.values()]
    first += [old.run_started(0), old.run_completed(1), ticks.run_started(0)]
    running = start_processors(settings, tmp_path / "processors.log")
    try:
        asyncio.run(produce(settings, first))

        ticked = list[bool]()

        def closed() -> bool:
            held = changelog(settings)
            if any(not (held.get(key(run_id)) or b"").startswith(b"\x00steplog-closed")
                   for run_id in RUNS):
                # The log's time moves on with the broker's clock as events come.
                asyncio.run(produce(settings, [ticks.completed("tick", 0)]))
                ticked.append(True)
                return False
            return key("z") in held and held[key("z")] is None  # its marker went too

        wait_for(closed, what="closed markers in the changelog")
        asyncio.run(produce(settings, [runs["a0"].completed("late", 1)]))

        def reasons() -> list[Any]:
            return [row[0] for row in running.sql.query(
                "SELECT reason FROM dead_letters FINAL").result_rows]

        wait_for(lambda: reasons() == ["run closed"], what="the late event's dead letter")
        # Every event sent is in the live projection before the stop (replay compares with it):
        # b's tick (the same event each time) was the last one sent.
        wait_for(lambda: running.sql.query(
            "SELECT count(DISTINCT event_id) FROM events WHERE run_id = 'b'"
        ).result_rows == [(1 + bool(ticked),)], what="b's events projected")
        statuses = running.sql.query(
            "SELECT run_id, status, version FROM runs_current WHERE run_id != 'b' "
            "ORDER BY run_id").result_rows
        assert statuses == [  # the projections keep the runs; the late event folded nowhere
            ("a0", "completed", 2), ("a1", "completed", 2), ("a2", "completed", 2),
            ("z", "completed", 2),
        ]
    finally:
        running.stop()

    replay_dry_run(settings, 1, ("events", "runs", "steps", "run_list"))
