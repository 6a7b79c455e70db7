"""The flows' host: what every process does with the flows topic, read once
(processors/definitions.py follows it): learn the flow and workflow definitions (the fold's
graphs and the workflow registry), write the flow definitions to the `flows` table, and
dead-letter what is unusable.

Every process writes the flows it reads, at each start from the topic's beginning: the table is
a ReplacingMergeTree on (project, slug) by `defined_at`, so the same definition written again,
by several processes or after a restart, leaves one row. An unusable message is dead-lettered
only when it arrives after the start-up read (`caught_up`): the messages the topic held then
were dead-lettered when they arrived, so a restart does not write them to the dead letters
again. Each processors process follows the topic, so with N of them an unusable message has N
dead letters (same source offset; the dead letters are at-least-once anyway).

Where signatures are enforced (`checks`), a definition that fails the record checks
(processors/record_checks.py) is unusable alike: neither learned nor written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

from steplog.errors import InvalidEventError
from steplog.projections.writer import TableRows
from steplog.schemas.codec import decode_flows_message
from steplog.schemas.flows import FlowDefinition, FlowsMessage

from .config import ProcessorConfig
from .dead_letters import RowSource, add_dead_letter
from .dispatch import Outbox
from .projection_batch import ProjectionBatch
from .projection_writes import ProjectionWrites
from .record_checks import RecordChecks, SignedRecord
from .stateful_consumer import Record

__all__ = ["FlowsHost"]


class FlowsHost:
    """Handles the flows topic's records, a fetched batch at a time (`process_flows`)."""

    def __init__(
        self,
        config: ProcessorConfig,
        writes: ProjectionWrites,
        learn: Callable[[Iterable[FlowsMessage]], None],
        caught_up: asyncio.Event,
        checks: RecordChecks | None = None,
    ) -> None:
        self.config = config
        self.writes = writes
        self.learn = learn
        """Where the definitions go (`FoldHost.learn`)."""
        self.caught_up = caught_up
        """Set once the start-up read is done (`DefinitionsFollower.caught_up`)."""
        self.checks = checks
        """The record checks; None: not enforced."""
        self._writing: asyncio.Task[None] | None = None
        """The last batch's write and dead letters, under way in the background."""

    async def process_flows(self, batch: Sequence[Record]) -> None:
        """Learn the batch's definitions at once (the fold and the dispatcher wait for them, and
        a workflow defined just before its first run must be known when the run is folded),
        then, in the background and in batch order, write its flow definitions and send the dead
        letters of its unusable messages. A failed write's error is raised by the next call."""
        definitions: list[FlowsMessage] = []
        projection = ProjectionBatch()
        outbox = self.writes.dispatcher.outbox()
        sources: dict[tuple[str, str], RowSource] = {}
        arrived_since_start = self.caught_up.is_set()
        # The follower's records are aiokafka's ConsumerRecords: headers and log time too.
        records = cast(Sequence[SignedRecord], batch)
        if self.checks is not None:
            await self.checks.prepare(records)
        for message in records:
            try:
                definition = decode_flows_message(
                    message.value, max_bytes=self.config.max_event_bytes
                )
                if self.checks is not None:
                    self.checks.check(message, definition.project)
            except InvalidEventError as exc:
                if arrived_since_start:
                    add_dead_letter(self.config.topics.dlq, outbox, exc, message, message.value)
                continue
            definitions.append(definition)
            if isinstance(definition, FlowDefinition):
                projection.add_flow(definition)
                sources[definition.project, definition.slug] = RowSource(
                    message.topic, message.partition, message.offset, message.key
                )
        if definitions:
            self.learn(definitions)
        previous = self._writing
        if previous is not None and previous.done():
            previous.result()
            previous = None
        self._writing = asyncio.create_task(
            self._record(previous, projection.table_rows(), sources, outbox)
        )

    async def _record(
        self,
        previous: asyncio.Task[None] | None,
        rows: Mapping[str, TableRows],
        sources: Mapping[tuple[str, str], RowSource],
        outbox: Outbox,
    ) -> None:
        if previous is not None:
            await previous  # batch order; the previous write's failure is this one's
        await self.writes.write(
            rows, lambda row: sources[str(row.values["project"]), str(row.values["slug"])]
        )
        await outbox.flush()
