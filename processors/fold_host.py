"""The fold's host: one batch of the events topic decoded, folded, carried out and kept
(`FoldHost.process_events`, steps 1-4 of docs/processors.md), its rows written later by the
consumer (`FoldHost.write_rows`, step 5).

Per batch (whatever the consumer's `getmany` returned, up to `batch_size`):

1. decode each event, and check its signature where signatures are enforced
   (record_checks.py); one that cannot be used goes to the dead-letter list with the reason;
2. fold it into its run's state (from the run store, keyed by run): the fold hands back one
   result for the batch (`batch_fold.FoldedBatch`: the touched states and their rows);
3. send the dead letters and the fold's messages (commands, events for other runs, signals
   bookkeeping) and wait until Kafka has acknowledged every one;
4. apply the result: the new run states into the store (memory now, the changelog in 6) and
   the timer changes to the timer service; `process_events` returns the rows, and the
   consumer (processors/stateful_consumer.py) does the rest:
5. once the previous batch is committed: write the batch's rows to ClickHouse (retrying with
   backoff until it succeeds; `write_rows`, one write for every batch folded meanwhile);
6. send the batch's states to the changelog, acknowledged;
7. commit the offsets.

A crash between any two steps folds the batch again after a restart, from the states of the
changelog: the same rows with the same versions, and the same messages with the same derived
ids (duplicates, dropped by their consumers); docs/processors.md has the table.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import cast

from steplog.errors import InvalidEventError
from steplog.metrics import metrics
from steplog.projections.writer import RefusedRow, TableRows
from steplog.schemas.flows import FlowDefinition, FlowsMessage, WorkflowDefinition

from .batch_fold import FoldedBatch, decode_run_event
from .batch_metrics import BatchMetrics, RunLabels
from .config import ProcessorConfig
from .dead_letters import RowSource, add_dead_letter
from .dispatch import Dispatcher, Planned
from .fold.state import RunState
from .projection_writes import ProjectionWrites
from .record_checks import RecordChecks, SignedRecord
from .run_retention import admission_of
from .state_store import StateStore
from .stateful_consumer import Record
from .timer_service import TimerService

__all__ = ["FoldHost"]


class FoldHost:
    """The batch procedure of the module docstring, independent of how batches are consumed."""

    def __init__(
        self,
        config: ProcessorConfig,
        writes: ProjectionWrites,
        runs: StateStore[RunState],
        dispatcher: Dispatcher,
        timers: TimerService | None = None,
        checks: RecordChecks | None = None,
    ) -> None:
        self.config = config
        self.writes = writes
        self.runs = runs
        self.dispatcher = dispatcher
        self.registry = dispatcher.registry
        self.timers = timers or TimerService(runs.find, dispatcher)
        self.flows: dict[str, FlowDefinition] = {}
        self.write_health = writes.health
        """How the projection writes are going (the health endpoint reads it)."""
        self.labels = RunLabels()
        self.checks = checks
        """The signed records' checks, where signatures are enforced (record_checks.py)."""

    async def process_events(self, batch: Sequence[Record]) -> Mapping[str, TableRows]:
        """Steps 1-4 of the module docstring; returns the batch's rows (step 5 is the
        consumer's). Counted in the metrics here, not in batch_fold: replay shares that."""
        began = time.perf_counter()
        if self.checks is not None:
            # The consumer's records are aiokafka's ConsumerRecords: headers and log time too.
            await self.checks.prepare(cast(Sequence[SignedRecord], batch))
        counts = BatchMetrics(self.runs.get, self.flows, self.labels)
        folded = FoldedBatch(self.flows, counts.load, admission=admission_of(self.runs))
        outbox = self.dispatcher.outbox()
        planned: list[Planned] = []
        for message in batch:
            try:
                event = decode_run_event(message.key, message.value, self.config.max_event_bytes)
                if self.checks is not None:
                    self.checks.check(cast(SignedRecord, message), event.project)
                # RunClosedError too: an event for a run that left the state (run_retention).
                state_key, state, effects = folded.fold(
                    event, message.partition, message.offset, message.timestamp
                )
            except InvalidEventError as exc:
                add_dead_letter(self.config.topics.dlq, outbox, exc, message, message.value)
                continue
            counts.folded(state_key, state, event.type)
            position = (message.partition, message.offset)
            if state.position is None or state.position < position:
                state.position = position
            planned.extend(Planned(effect, state_key, position) for effect in effects)
        folded.add_run_rows()
        counts.count(folded)  # before step 4: the store still holds the states of before
        # Messages first: a resume must not wait for the ClickHouse insert, nor for the
        # previous batches', which may still be under way.
        result = await self.dispatcher.carry_out(planned, outbox)
        # Step 4, with no await from here on: the timer service never sees a timer whose
        # run's state is not in the store yet.
        for state_key, (state, partition) in folded.touched.items():
            self.runs.put(partition, state_key, state)
        self.timers.apply(result.timers)
        metrics().fold_batch_seconds.observe(time.perf_counter() - began)
        return folded.projection.table_rows()

    def learn(self, definitions: Iterable[FlowsMessage]) -> None:
        """Keep the newest of each flow and workflow definition; a workflow new to the registry
        may be what a scheduled start was waiting for."""
        learned = False
        scheduled: list[WorkflowDefinition] = []
        for definition in definitions:
            if isinstance(definition, WorkflowDefinition):
                learned = self.registry.remember(definition) or learned
                # The newest definition's schedule only (an older one is not the workflow's).
                newest = self.registry.definition(definition.project, definition.app,
                                                  definition.name)
                if definition.schedule is not None and newest is definition:
                    scheduled.append(definition)
                continue
            held = self.flows.get(definition.key)
            if held is None or held.ts <= definition.ts:
                self.flows[definition.key] = definition
        if learned:
            self.timers.registry_changed()
        if scheduled:
            self.timers.schedules_learned(scheduled)

    async def recovered(self) -> None:
        """The run store holds new partitions (start-up, or a rebalance): rebuild what is
        derived from every run state, the timer heap and the parents of running children."""
        self.dispatcher.parents.clear()  # of the partitions held before: rebuilt below
        self.timers.rebuild(self._all_states())

    def _all_states(self) -> Iterator[tuple[bytes, RunState]]:
        for state_key, state in self.runs.items():
            self.dispatcher.remember_parents(state_key, state)
            yield state_key, state

    async def write_rows(self, rows: Mapping[str, TableRows]) -> None:
        """Write rows to the projection tables (`ProjectionWrites.write`); a refused row's dead
        letter names the event that led to it."""
        await self.writes.write(rows, self._run_row_source)

    def _run_row_source(self, refused: RefusedRow) -> RowSource:
        """Where the event behind a refused events, runs or steps row was read: an events row
        names its own position; a run's or step's row, the newest event folded into its run."""
        values = refused.values
        run_id = str(values["run_id"])
        if refused.table == "events":
            position = (int(values["log_partition"]), int(values["log_offset"]))
        else:
            state = self.runs.find(f"{values['project']}\x00{values['flow']}\x00{run_id}".encode())
            position = state.position if state is not None and state.position else (0, 0)
        return RowSource(self.config.topics.events, *position, run_id.encode())
