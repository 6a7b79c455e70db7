"""The faust app that hosts the fold: consume events, fold them, project, dead-letter the rest.

Per batch (faust `take_events`, up to `batch_size` events or `batch_seconds`):

1. decode each event; one that cannot be used goes to the dead-letter list with the reason;
2. fold it into its run's state (taken from the `runs` table, keyed by run_id);
3. write the batch's rows to ClickHouse (retrying with backoff until it succeeds);
4. send the dead letters and wait until Kafka has them;
5. store the new run states in the table (in memory, and to its changelog topic);
6. return, which lets faust acknowledge the batch; faust commits acknowledged offsets later,
   after flushing its producer (so the changelog of step 5 is durable before the commit).

What a crash between two steps does (the process may die anywhere):
- before 3: nothing was written; the events are delivered again and folded again.
- between 3 and 5: rows are in ClickHouse, the state is not; the events come again and are
  folded onto the old state, giving the same rows again (same versions, so ReplacingMergeTree
  keeps one; the events table collapses on event_id).
- between 5 and the commit: the state already has the events; folding them again is a no-op
  for the state and re-emits the same current rows.
So a restart converges to the same rows, nothing lost and nothing doubled in the views.

The agent runs with concurrency 1: one batch at a time, so a partition's events are folded in
log order and a run's state is never updated by two batches at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import faust
from faust.streams import Stream
from faust.types import EventT, StreamT, TableT
from tenacity import AsyncRetrying, RetryCallState, wait_exponential_jitter

from steplog.errors import InvalidEventError
from steplog.projections.writer import ProjectionWriter
from steplog.schemas.codec import decode_event, decode_flow, encode
from steplog.schemas.dead_letters import DeadLetter
from steplog.schemas.events import Event
from steplog.schemas.flows import FlowDefinition
from steplog.schemas.topics import TopicNames

from .fold import apply_event
from .projection_batch import ProjectionBatch
from .state import RunState

log = logging.getLogger("steplog.processors")


@dataclass(frozen=True)
class ProcessorConfig:
    app_id: str
    """Consumer group and prefix of the changelog topics; one per topic prefix."""
    bootstrap: str
    topics: TopicNames
    events_partitions: int
    replication_factor: int
    max_event_bytes: int
    data_dir: Path
    batch_size: int = 10_000
    batch_seconds: float = 0.05


class FoldHost:
    """The batch procedure of the module docstring, independent of faust's agent plumbing."""

    def __init__(
        self,
        config: ProcessorConfig,
        writer: ProjectionWriter,
        runs: TableT[bytes, Any],
        dead_letters: faust.TopicT,
        producer_flush: Callable[[], Any],
    ) -> None:
        self.config = config
        self.writer = writer
        self.runs = runs
        self.dead_letters = dead_letters
        self.producer_flush = producer_flush
        self.flows: dict[str, FlowDefinition] = {}

    async def process_events(self, batch: Sequence[EventT[Any]]) -> None:
        projection = ProjectionBatch()
        dead: list[DeadLetter] = []
        touched: dict[bytes, tuple[RunState, int]] = {}
        for item in batch:
            message = item.message
            value = message.value or b""  # a tombstone is as undecodable as garbage
            try:
                event = decode_event(value, max_bytes=self.config.max_event_bytes)
                run_key = event.run_id.encode()
                if message.key != run_key:
                    # The run's state lives in the partition of its key: an event keyed
                    # otherwise would fold into a second, partial state of the same run.
                    raise InvalidEventError(
                        "run_id", f"message key {message.key!r} is not the event's run_id"
                    )
            except InvalidEventError as exc:
                dead.append(
                    DeadLetter.for_message(
                        exc, message.topic, message.partition, message.offset,
                        message.key, value,
                    )
                )
                continue
            state_key = run_state_key(event)
            held = touched.get(state_key)
            state = held[0] if held else self._load_state(state_key)
            flow = self.flows.get(f"{event.project}/{event.flow}")
            state, effects = apply_event(state, event, flow)
            touched[state_key] = (state, message.partition)
            projection.add_event(event, message.partition, message.offset)
            projection.add_effects(effects)
        await self._write(projection)
        await self._send_dead_letters(dead)
        for state_key, (state, partition) in touched.items():
            self._store_state(state_key, state, partition)

    async def process_flows(self, batch: Sequence[EventT[Any]]) -> None:
        projection = ProjectionBatch()
        dead: list[DeadLetter] = []
        for item in batch:
            message = item.message
            value = message.value or b""
            try:
                definition = decode_flow(value, max_bytes=self.config.max_event_bytes)
            except InvalidEventError as exc:
                dead.append(
                    DeadLetter.for_message(
                        exc, message.topic, message.partition, message.offset,
                        message.key, value,
                    )
                )
                continue
            self.remember_flows([definition])
            projection.add_flow(definition)
        await self._write(projection)
        await self._send_dead_letters(dead)

    def remember_flows(self, definitions: Iterable[FlowDefinition]) -> None:
        for definition in definitions:
            held = self.flows.get(definition.key)
            if held is None or held.ts <= definition.ts:
                self.flows[definition.key] = definition

    def _load_state(self, state_key: bytes) -> RunState | None:
        # The store holds RunState objects for runs folded by this process and the changelog's
        # bytes for runs recovered at start-up; decode those on first use.
        value = self.runs.data.get(state_key)
        if value is None or isinstance(value, RunState):
            return value
        return RunState.from_bytes(value)

    def _store_state(self, state_key: bytes, state: RunState, partition: int) -> None:
        # Set the store directly and send the changelog to the source partition explicitly:
        # faust's own __setitem__ takes the partition from the "current event", which in a
        # batch is the last event's, not necessarily this run's.
        self.runs.data[state_key] = state
        self.runs.send_changelog(partition, state_key, state.to_bytes())

    async def _write(self, projection: ProjectionBatch) -> None:
        if not len(projection):
            return
        rows = projection.table_rows()
        loop = asyncio.get_running_loop()
        async for attempt in AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=0.2, max=30, jitter=0.5),
            before_sleep=_log_retry,
        ):
            with attempt:
                # A thread: the insert blocks, and the loop must keep heartbeating meanwhile.
                await loop.run_in_executor(None, self.writer.write, rows)

    async def _send_dead_letters(self, dead: list[DeadLetter]) -> None:
        if not dead:
            return
        for letter in dead:
            key = letter.key_b64.encode() if letter.key_b64 else None
            await self.dead_letters.send(key=key, value=encode(letter, max_bytes=2**24))
            log.warning(
                "dead letter: %s at %s[%d]@%d", letter.reason, letter.source_topic,
                letter.partition, letter.offset,
            )
        await self.producer_flush()


def run_state_key(event: Event) -> bytes:
    """The state table's key of an event's run. Runs are identified by project, flow and run id
    together (two flows may both use a request id as their run id); all three share the Kafka
    key's partition, since the message key is the run id."""
    return f"{event.project}\x00{event.flow}\x00{event.run_id}".encode()


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    log.warning(
        "projection write failed (attempt %d), retrying: %s",
        state.attempt_number,
        outcome.exception() if outcome else "?",
    )


def create_processor_app(
    config: ProcessorConfig, writer: ProjectionWriter, flows: list[FlowDefinition]
) -> tuple[faust.App, FoldHost]:
    """The faust app with its agents; `flows` are the definitions known at start-up."""
    app = faust.App(
        config.app_id,
        broker=f"kafka://{config.bootstrap}",
        store="memory://",
        datadir=str(config.data_dir),
        topic_partitions=config.events_partitions,
        topic_replication_factor=config.replication_factor,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        # Do not wait at shutdown for events still in hand: they were not acknowledged, so
        # they are delivered again after a restart, and folding them again is idempotent.
        stream_wait_empty=False,
        autodiscover=False,
        broker_commit_interval=1.0,
        producer_max_request_size=config.max_event_bytes * 2,
        consumer_max_fetch_size=max(config.max_event_bytes * 2, 4 * 1024 * 1024),
    )
    raw: dict[str, Any] = {
        "key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"
    }
    events_topic = app.topic(config.topics.events, partitions=config.events_partitions, **raw)
    flows_topic = app.topic(config.topics.flows, **raw)
    dead_letters = app.topic(config.topics.dlq, **raw)
    # bytes key and value types make faust's table use the raw codec.
    runs = app.Table("runs", partitions=config.events_partitions, key_type=bytes, value_type=bytes)
    host = FoldHost(config, writer, runs, dead_letters, lambda: app.producer.flush())
    host.remember_flows(flows)

    @app.agent(events_topic, name="fold_events", concurrency=1)
    async def fold_events(stream: StreamT[bytes]) -> None:
        async for batch in cast(Stream[bytes], stream).take_events(config.batch_size, within=config.batch_seconds):
            await host.process_events(batch)

    @app.agent(flows_topic, name="record_flows", concurrency=1)
    async def record_flows(stream: StreamT[bytes]) -> None:
        async for batch in cast(Stream[bytes], stream).take_events(100, within=0.1):
            await host.process_flows(batch)

    return app, host
