"""The processors' app: the fold and the workflow engine around it, in one process.

Consumers and tasks (see docs/processors.md for the whole protocol):

- `fold_events` (a task hosting a `StatefulConsumer`: a plain aiokafka consumer on the events
  topic, group `ProcessorConfig.app_id`, one batch at a time): decode, fold, project,
  dead-letter, carry out the fold's engine effects, keep run states (`FoldHost.process_events`,
  states in a `StateStore` of `RunState`);
- `resolve_signals` (a task hosting another `StatefulConsumer`: the signals topic, group
  `ProcessorConfig.signals_group`): triggers and waits per event name
  (`SignalsHost.process_signals`, logic in `signals_agent`, states in two `StateStore`s);
- `record_flows` (faust agent, flows topic, in the processes its group gives the partitions):
  flow definitions to the `flows` table, unusable messages to the dead letters
  (`FoldHost.process_flows`);
- `follow_flows` (a task, in every process: the whole flows topic, no group): flow and
  workflow definitions to the fold and the registry (`definitions.DefinitionsFollower`,
  `FoldHost.learn`);
- `fire_timers` (a task): the timer service (`TimerService`), rebuilt from the run states each
  time the run store has recovered partitions.

The faust app hosts them all (its worker runs the tasks, and stops them on SIGINT/SIGTERM), but
only `record_flows` consumes through faust (group `ProcessorConfig.flows_app_id`).

Per batch of events (whatever the consumer's `getmany` returned, up to `batch_size`):

1. decode each event; one that cannot be used goes to the dead-letter list with the reason;
2. fold it into its run's state (from the run store, keyed by run);
3. send the dead letters and the fold's messages (commands, events for other runs, signals
   bookkeeping) and wait until Kafka has acknowledged every one; `process_events` returns
   here (`FoldedEvents`), the consumer does the rest:
4. put the new run states in the store (memory now, the changelog in 6) and hand the timer
   changes to the timer service (`keep`);
5. once the previous batch is committed: write the batch's rows to ClickHouse (retrying with
   backoff until it succeeds; `write_rows`, one write for every batch folded meanwhile);
6. send the batch's states to the changelog, acknowledged;
7. commit the offsets.

Steps 5-7 of a batch run in the background while the next batches go through 1-4: their
resumes do not wait for an insert (with the embedded engine it runs in another process,
steplog/server/store_process.py).
A crash between any two steps folds the batch again after a restart, from the states of the
changelog: the same rows with the same versions, and the same messages with the same derived
ids (duplicates, dropped by their consumers); docs/processors.md has the table. A run's (or a
name's) state is never updated by two batches at once, and a partition's messages are handled
in log order.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, cast

import faust
from faust.streams import Stream
from faust.types import EventT, StreamT
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_not_exception_type,
    wait_exponential_jitter,
)

from steplog.errors import InvalidEventError, StoreProcessGoneError
from steplog.projections.writer import BatchWriter, RefusedRow, TableRows
from steplog.schemas.codec import decode_flows_message, decode_signals_message, encode
from steplog.schemas.dead_letters import DeadLetter
from steplog.schemas.flows import FlowDefinition, FlowsMessage, WorkflowDefinition
from steplog.schemas.topics import TopicNames

from .batch_fold import FoldedBatch, decode_run_event
from .definitions import DefinitionsFollower
from .dispatch import Dispatcher, Outbox, Planned, SendFunction
from .effects import ClearTimer, SetTimer, TimerKind
from .membership import GroupMembership
from .projection_batch import ProjectionBatch
from .registry import WorkflowRegistry
from .signals_agent import NameTriggers, NameWaits, apply_signals_message
from .state import RunState
from .state_store import S, StateStore
from .stateful_consumer import Record, RecordPosition, StatefulConsumer
from .timers import TimerHeap, fire_timer
from .write_health import WriteHealth

log = logging.getLogger("steplog.processors")

Clock = Callable[[], datetime]

_TIMER_MAX_SLEEP_S: Final = 1.0
_TIMER_RETRY_S: Final = 1.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ProcessorConfig:
    app_id: str
    """The fold's consumer group (the events topic) and the prefix of the other groups and
    changelog topics; one per topic prefix."""
    bootstrap: str
    topics: TopicNames
    events_partitions: int
    replication_factor: int
    max_event_bytes: int
    data_dir: Path
    state_memory_bytes: int
    """Memory for each state store's states (STEPLOG_STATE_MEMORY_MB; the runs' is the one
    that grows: the waits' and triggers' are per event name)."""
    batch_size: int = 10_000
    """The most events (or signals) handled as one batch."""
    write_interval: float = 0.2
    """The least time between two completions of a consumer, in seconds (STEPLOG_WRITE_INTERVAL_MS):
    the batches handled meanwhile are written, sent to the changelogs and committed together.
    An insert costs the engine tens of ms of CPU (and a part to merge) however few its rows,
    and each changelog send and commit is a broker request, so a trickle of events completed
    batch by batch kept a core busy (BENCHMARKS.md); rows become visible up to this much
    later. Messages (resumes) do not wait for it."""
    membership: GroupMembership = GroupMembership()
    """This process's client id and static member id in every group it joins
    (processors/membership.py)."""

    @property
    def signals_group(self) -> str:
        """The signals' consumer group: the faust app's id when the signals were a faust agent
        (and the prefix of its tables' changelogs), so the offsets it committed go on with the
        states of those changelogs (`waits_changelog`, `triggers_changelog`)."""
        return f"{self.app_id}-agents"

    @property
    def flows_app_id(self) -> str:
        """The faust app's id: the consumer group of the flows agent. Neither `app_id` nor
        `signals_group`: faust's group assigns partitions with its own protocol, which a plain
        consumer cannot join (nor the other way round)."""
        return f"{self.app_id}-flows"

    @property
    def runs_changelog(self) -> str:
        """The run store's changelog topic (the name faust gave the `runs` table's when the
        fold was an agent, so states stored then are read back)."""
        return f"{self.app_id}-runs-changelog"

    @property
    def waits_changelog(self) -> str:
        """The waits' changelog (faust's name for the `waits` table's: states stored then are
        read back)."""
        return f"{self.signals_group}-waits-changelog"

    @property
    def triggers_changelog(self) -> str:
        """The triggers' changelog (faust's name for the `triggers` table's)."""
        return f"{self.signals_group}-triggers-changelog"

    @property
    def max_fetch_bytes(self) -> int:
        """Per partition and fetch: at least one message of the largest size allowed."""
        return max(self.max_event_bytes * 2, 4 * 1024 * 1024)

    def state_store(self, changelog: str, decode: Callable[[bytes], S]) -> StateStore[S]:
        """A state store on `changelog` (one of the three above), within these limits."""
        return StateStore(self.bootstrap, changelog, decode,
                          max_message_bytes=self.max_fetch_bytes,
                          memory_bytes=self.state_memory_bytes)


# --- timers ------------------------------------------------------------------------------------


class TimerService:
    """Keeps the due times of every run and, when one is due, writes what it means.

    The heap is in memory only. It is rebuilt from the run states each time the run store has
    recovered partitions (`rebuild`), and kept up to date by the fold host after each batch
    (`apply`), once the batch's states are stored: a due timer is checked against the stored
    state (`timers.fire_timer`), which must already be the one that wanted it.

    `run` sleeps until the earliest due time (at most a second, and woken early when a sooner
    timer is set), fires what is due, and waits for Kafka's acknowledgements. A fired timer is
    forgotten: its run's next event decides what comes next (a woken sleep's step.completed,
    a worker's step.started), and after a restart the rebuilt heap fires it again if the run
    still wants it: a duplicate, dropped by its consumer thanks to its derived id.
    """

    def __init__(
        self,
        load_state: Callable[[bytes], RunState | None],
        dispatcher: Dispatcher,
        clock: Clock = _utc_now,
    ) -> None:
        self.heap = TimerHeap()
        self.load_state = load_state
        self.dispatcher = dispatcher
        self.clock = clock
        self.ready = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._unresolved: dict[bytes, SetTimer] = {}
        """Start timers whose workflow no app defines yet (the run stays scheduled)."""
        self._registry_changes = 0
        """Counts `registry_changed` calls, so that a firing can tell whether a workflow became
        known while it waited for its acknowledgements."""

    def rebuild(self, states: Iterable[tuple[bytes, RunState]]) -> None:
        self.heap.rebuild(states)
        self._unresolved.clear()
        log.info("timer service: %d timers after recovery", len(self.heap))
        self.ready.set()
        self._wakeup.set()

    def apply(self, changes: Iterable[tuple[bytes, SetTimer | ClearTimer]]) -> None:
        soonest = self.heap.next_due()
        wake = False
        for run_key, change in changes:
            if isinstance(change, SetTimer):
                self.heap.set(run_key, change)
                wake = wake or soonest is None or change.due < soonest
            else:
                self.heap.clear(run_key, change.kind, change.step_key)
                if change.kind is TimerKind.START:
                    self._unresolved.pop(run_key, None)
        if wake:
            self._wakeup.set()

    def registry_changed(self) -> None:
        """A workflow became known: try the starts that were waiting for an app again."""
        self._registry_changes += 1
        if not self._unresolved:
            return
        for run_key, timer in self._unresolved.items():
            self.heap.set(run_key, timer)
        self._unresolved.clear()
        self._wakeup.set()

    async def run(self) -> None:
        await self.ready.wait()
        while True:
            self._wakeup.clear()
            now = self.clock()
            due = self.heap.pop_due(now)
            if due:
                await self._fire(due, now)
                continue
            next_due = self.heap.next_due()
            timeout = _TIMER_MAX_SLEEP_S
            if next_due is not None:
                timeout = min(max((next_due - now).total_seconds(), 0.0), timeout)
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass

    async def _fire(self, due: Sequence[tuple[bytes, SetTimer]], now: datetime) -> None:
        planned = [
            Planned(effect, run_key)
            for run_key, timer in due
            for effect in fire_timer(self.load_state(run_key), timer, now)
        ]
        if not planned:
            return
        registry_changes = self._registry_changes
        try:
            result = await self.dispatcher.carry_out(planned)
        except Exception:
            log.exception("timer service: firing %d timers failed; again in %.0fs",
                          len(due), _TIMER_RETRY_S)
            later = now + timedelta(seconds=_TIMER_RETRY_S)
            for run_key, timer in due:
                if (run_key, timer.kind, timer.step_key) not in self.heap:  # not replaced since
                    self.heap.set(run_key, timer, at=later)
            return
        starts = {run_key: timer for run_key, timer in due if timer.kind is TimerKind.START}
        for run_key, command in result.unresolved:
            start = starts[run_key]
            if registry_changes != self._registry_changes:
                # The app was looked up before the acknowledgements were awaited, and the
                # registry changed since: set aside now, the start would wait for yet another
                # change. Fire it again instead.
                if (run_key, start.kind, start.step_key) not in self.heap:
                    self.heap.set(run_key, start)
                    self._wakeup.set()
                continue
            workflow = getattr(command.command, "workflow", "?")
            log.warning("scheduled run %s is due but no app defines workflow %r: it stays "
                        "scheduled (overdue) until a worker registers it",
                        command.command.run_id, workflow)
            self._unresolved[run_key] = start


# --- the fold ----------------------------------------------------------------------------------


class FoldHost:
    """The batch procedure of the module docstring, independent of how batches are consumed."""

    def __init__(
        self,
        config: ProcessorConfig,
        writer: BatchWriter,
        runs: StateStore[RunState],
        dispatcher: Dispatcher,
        timers: TimerService | None = None,
    ) -> None:
        self.config = config
        self.writer = writer
        self.runs = runs
        self.dispatcher = dispatcher
        self.registry = dispatcher.registry
        self.timers = timers or TimerService(runs.find, dispatcher)
        self.flows: dict[str, FlowDefinition] = {}
        self.write_health = WriteHealth()
        """How the projection writes are going (the health endpoint reads it)."""

    async def process_events(self, batch: Sequence[Record]) -> FoldedEvents:
        """Steps 1-3 of the module docstring; the rest is the returned batch's."""
        folded = FoldedBatch(self.flows, self.runs.get)
        outbox = self.dispatcher.outbox()
        planned: list[Planned] = []
        for message in batch:
            try:
                event = decode_run_event(message.key, message.value, self.config.max_event_bytes)
            except InvalidEventError as exc:
                self._dead_letter(outbox, exc, message, message.value)
                continue
            state_key, state, effects = folded.fold(event, message.partition, message.offset)
            position = (message.partition, message.offset)
            if state.position is None or state.position < position:
                state.position = position
            planned.extend(Planned(effect, state_key, position) for effect in effects)
        folded.add_run_rows()
        # Messages first: a resume must not wait for the ClickHouse insert, nor for the
        # previous batches', which may still be under way.
        result = await self.dispatcher.carry_out(planned, outbox)
        return FoldedEvents(self, folded.touched, result.timers, folded.projection.table_rows())

    async def process_flows(self, batch: Sequence[EventT[Any]]) -> None:
        """The flows agent's batch: flow definitions to the `flows` table, unusable messages to
        the dead letters. What the fold and the dispatcher know comes from `learn` (every
        process follows the topic, `definitions.DefinitionsFollower`; this agent runs in one)."""
        projection = ProjectionBatch()
        outbox = self.dispatcher.outbox()
        sources: dict[tuple[str, str], RowSource] = {}
        for item in batch:
            message = item.message
            try:
                definition = decode_flows_message(
                    message.value, max_bytes=self.config.max_event_bytes
                )
            except InvalidEventError as exc:
                self._dead_letter(outbox, exc, message, message.value)
                continue
            if isinstance(definition, FlowDefinition):
                projection.add_flow(definition)
                sources[definition.project, definition.slug] = RowSource(
                    message.topic, message.partition, message.offset, message.key
                )
        refused = await self._write(projection.table_rows())
        await self._dead_letter_rows(
            refused, lambda row: sources[str(row.values["project"]), str(row.values["slug"])]
        )
        await outbox.flush()

    def learn(self, definitions: Iterable[FlowsMessage]) -> None:
        """Keep the newest of each flow and workflow definition; a workflow new to the registry
        may be what a scheduled start was waiting for."""
        learned = False
        for definition in definitions:
            if isinstance(definition, WorkflowDefinition):
                learned = self.registry.remember(definition) or learned
                continue
            held = self.flows.get(definition.key)
            if held is None or held.ts <= definition.ts:
                self.flows[definition.key] = definition
        if learned:
            self.timers.registry_changed()

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
        """Write rows to the projection tables, retrying with backoff until it succeeds (a
        store process that died is not retried: the error stops the processors); rows the
        engine refuses for good go to the dead letters, naming the event that led to them."""
        refused = await self._write(rows)
        if refused:
            await self._dead_letter_rows(refused, self._run_row_source)

    async def _write(self, rows: Mapping[str, TableRows]) -> list[RefusedRow]:
        if not any(table.rows for table in rows.values()):
            return []
        loop = asyncio.get_running_loop()
        async for attempt in AsyncRetrying(
            wait=wait_exponential_jitter(multiplier=0.2, max=30, jitter=0.5),
            # A dead store process cannot come back: the error stops the processors.
            retry=retry_if_not_exception_type(StoreProcessGoneError),
            before_sleep=self._note_write_failure,
        ):
            with attempt:
                # A thread: the insert blocks, and the loop must keep heartbeating meanwhile.
                result = await loop.run_in_executor(None, self.writer.write, rows)
        self.write_health.succeeded(len(result.refused))
        return result.refused

    def _note_write_failure(self, state: RetryCallState) -> None:
        outcome = state.outcome
        error = outcome.exception() if outcome else None
        self.write_health.failed(error or "unknown error")
        log.warning(
            "projection write failed (attempt %d), retrying: %s", state.attempt_number, error
        )

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

    async def _dead_letter_rows(
        self, refused: Sequence[RefusedRow], locate: Callable[[RefusedRow], RowSource]
    ) -> None:
        """Dead letters for rows the engine refused: the reason is the engine's message, the
        value the row as JSON (the row is what was refused, and what an operator must fix)."""
        outbox = self.dispatcher.outbox()
        for row in refused:
            value = json.dumps(row.values, default=str, sort_keys=True).encode()
            problem = f"ClickHouse refused its row in the {row.table} table: {row.reason}"
            self._dead_letter(outbox, InvalidEventError(row.column, problem), locate(row), value)
        await outbox.flush()

    def _dead_letter(
        self, outbox: Outbox, exc: InvalidEventError, message: RecordPosition, value: bytes | None
    ) -> None:
        _add_dead_letter(self.config, outbox, exc, message, value)


@dataclass(frozen=True)
class RowSource:
    """Where the message behind a refused row was read (`RecordPosition`)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


@dataclass(frozen=True)
class FoldedEvents:
    """A batch of events folded, its messages acknowledged; its states not kept and its rows
    not written yet (`stateful_consumer.Processed`: the consumer keeps it at once and writes
    its rows in the background with `FoldHost.write_rows`, then commits the offsets)."""

    host: FoldHost
    states: dict[bytes, tuple[RunState, int]]
    timers: list[tuple[bytes, SetTimer | ClearTimer]]
    rows: dict[str, TableRows]

    def keep(self) -> None:
        """Step 4: the states into the run store (memory; the changelog later) and the timer
        changes to the timer service."""
        for state_key, (state, partition) in self.states.items():
            self.host.runs.put(partition, state_key, state)
        self.host.timers.apply(self.timers)


# --- signals -----------------------------------------------------------------------------------


class SignalsHost:
    """The signals' batch: decode, apply per name, carry out; the consumer stores the names.

    Same protocol as the fold's: the effects (start_run commands, step.completed events) are
    acknowledged before `process_signals` returns, the names' states are stored after that (the
    consumer keeps them, then sends them to the changelogs), and the offsets are committed after
    the states: a crash in between handles the batch again from the old states and writes the
    same messages with the same derived ids.
    """

    def __init__(
        self,
        config: ProcessorConfig,
        waits: StateStore[NameWaits],
        triggers: StateStore[NameTriggers],
        dispatcher: Dispatcher,
        clock: Clock = _utc_now,
    ) -> None:
        self.config = config
        self.waits = waits
        self.triggers = triggers
        self.dispatcher = dispatcher
        self.clock = clock

    async def process_signals(self, batch: Sequence[Record]) -> AppliedSignals:
        outbox = self.dispatcher.outbox()
        planned: list[Planned] = []
        applied = AppliedSignals(self)
        now = self.clock()
        for message in batch:
            try:
                decoded = decode_signals_message(
                    message.value, max_bytes=self.config.max_event_bytes
                )
                name_key = decoded.name.encode()
                if message.key != name_key:
                    # A name's waits and triggers live in the partition of its key.
                    raise InvalidEventError(
                        "name", f"message key {message.key!r} is not the message's name"
                    )
            except InvalidEventError as exc:
                _add_dead_letter(self.config, outbox, exc, message, message.value)
                continue
            partition = message.partition
            held_waits = applied.waits.get(name_key)
            waits = held_waits[0] if held_waits else (
                self.waits.get(partition, name_key) or NameWaits()
            )
            held_triggers = applied.triggers.get(name_key)
            triggers = held_triggers[0] if held_triggers else (
                self.triggers.get(partition, name_key) or NameTriggers()
            )
            effects = apply_signals_message(waits, triggers, decoded, now)
            if decoded.type == "trigger.registered":
                applied.triggers[name_key] = (triggers, partition)
            else:
                applied.waits[name_key] = (waits, partition)
            planned.extend(Planned(effect) for effect in effects)
        await self.dispatcher.carry_out(planned, outbox)
        return applied


@dataclass
class AppliedSignals:
    """A batch of signals applied, its messages acknowledged; its names' states not kept yet
    (`stateful_consumer.Processed`; no rows)."""

    host: SignalsHost
    waits: dict[bytes, tuple[NameWaits, int]] = field(default_factory=dict)
    triggers: dict[bytes, tuple[NameTriggers, int]] = field(default_factory=dict)
    """The touched names' states and their partition, by name."""

    @property
    def rows(self) -> Mapping[str, TableRows]:
        return {}

    def keep(self) -> None:
        """The names' states into their stores (memory; the changelogs later)."""
        for name_key, (waits, partition) in self.waits.items():
            self.host.waits.put(partition, name_key, waits)
        for name_key, (triggers, partition) in self.triggers.items():
            self.host.triggers.put(partition, name_key, triggers)


# --- shared ------------------------------------------------------------------------------------


def _add_dead_letter(
    config: ProcessorConfig,
    outbox: Outbox,
    exc: InvalidEventError,
    message: RecordPosition,
    value: bytes | None,
) -> None:
    letter = DeadLetter.for_message(
        exc, message.topic, message.partition, message.offset, message.key, value or b""
    )
    key = letter.key_b64.encode() if letter.key_b64 else None
    outbox.add(config.topics.dlq, key, encode(letter, max_bytes=2**24))
    log.warning(
        "dead letter: %s at %s[%d]@%d", letter.reason, letter.source_topic,
        letter.partition, letter.offset,
    )


def create_processor_app(
    config: ProcessorConfig, writer: BatchWriter, flows: list[FlowDefinition]
) -> tuple[faust.App, FoldHost]:
    """The faust app with its agent and tasks; `flows` are the flow definitions of the `flows`
    table (the fold also waits until it has followed the flows topic to its end: `follow_flows`)."""
    app = faust.App(
        config.flows_app_id,
        broker=f"kafka://{config.bootstrap}",
        store="memory://",
        datadir=str(config.data_dir),
        topic_partitions=config.events_partitions,
        topic_replication_factor=config.replication_factor,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        # Do not wait at shutdown for flows still in hand: they were not acknowledged, so
        # they are delivered again after a restart, and recording them again is idempotent.
        stream_wait_empty=False,
        autodiscover=False,
        broker_commit_interval=1.0,
        producer_max_request_size=config.max_event_bytes * 2,
        # The producer sends what a batch asks for at once: resumes wait on it.
        producer_linger=0.0,
        consumer_max_fetch_size=config.max_fetch_bytes,
        # The flows agent's consumer is a static member too: faust's worker waits for its
        # group before it runs any task, so a restart waited out the dead member's session.
        consumer_group_instance_id=config.membership.instance_id,
    )
    raw: dict[str, Any] = {
        "key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"
    }
    flows_topic = app.topic(config.topics.flows, **raw)

    async def send(topic: str, key: bytes | None, value: bytes) -> Any:
        # Straight to the producer: faust's topic.send would attach the message to the current
        # stream event and send it only when that event is acknowledged, after the batch.
        return await app.producer.send(topic, key, value, None, None, None)

    dispatcher = Dispatcher(
        config.topics, cast(SendFunction, send), WorkflowRegistry(),
        max_bytes=config.max_event_bytes,
    )
    runs = config.state_store(config.runs_changelog, RunState.from_bytes)
    host = FoldHost(config, writer, runs, dispatcher)
    host.learn(flows)
    # Set once the definitions the flows topic held at start-up are learned: the fold and the
    # timers wait for it (processors/definitions.py).
    definitions_known = asyncio.Event()
    events = StatefulConsumer(
        bootstrap=config.bootstrap, group_id=config.app_id, topic=config.topics.events,
        stores=[runs], process=host.process_events, write=host.write_rows,
        recovered=host.recovered, max_records=config.batch_size,
        max_fetch_bytes=config.max_fetch_bytes, write_interval=config.write_interval,
        membership=config.membership,
    )
    waits = config.state_store(config.waits_changelog, NameWaits.from_bytes)
    triggers = config.state_store(config.triggers_changelog, NameTriggers.from_bytes)
    signals_host = SignalsHost(config, waits, triggers, dispatcher)
    signals = StatefulConsumer(
        bootstrap=config.bootstrap, group_id=config.signals_group, topic=config.topics.signals,
        stores=[waits, triggers], process=signals_host.process_signals,
        max_records=config.batch_size, max_fetch_bytes=config.max_fetch_bytes,
        write_interval=config.write_interval, membership=config.membership,
    )

    @app.task  # type: ignore[untyped-decorator]
    async def fold_events() -> None:
        await definitions_known.wait()
        await events.run()

    @app.task  # type: ignore[untyped-decorator]
    async def resolve_signals() -> None:
        await signals.run()

    @app.agent(flows_topic, name="record_flows", concurrency=1)
    async def record_flows(stream: StreamT[bytes]) -> None:
        async for batch in cast(Stream[bytes], stream).take_events(100, within=0.1):
            await host.process_flows(batch)

    @app.task  # type: ignore[untyped-decorator]
    async def follow_flows() -> None:
        await DefinitionsFollower(
            config.bootstrap, config.topics.flows, host.learn, definitions_known,
            max_bytes=config.max_event_bytes, max_fetch_bytes=config.max_fetch_bytes,
        ).run()

    @app.task  # type: ignore[untyped-decorator]
    async def fire_timers() -> None:
        await definitions_known.wait()
        await host.timers.run()

    return app, host
