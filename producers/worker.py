"""The worker: consumes its app's commands, executes runs, commits what is settled.

    app.worker().run()                      # blocking; SIGINT / SIGTERM stop it gracefully
    worker = app.worker(); await worker.start(); ...; await worker.stop()

**Start.** Registers every workflow of the app (`workflow.defined` on the flows topic, one
`trigger.registered` per trigger on the signals topic) and waits for the acknowledgements, then
joins the consumer group `<prefix>worker.<app>` on the commands topic.

**Commands.** A command for another app (or project) is skipped. `start_run` writes the run's
`run.started` (its event id derived from the run id, so a duplicated start is a duplicate
event). A start this worker is the first to see executes its first pass at once, with an empty
history: a start_run written after the partition was assigned here (its offset is at least
the partition's end offset at assignment) cannot have been handled by a previous owner, so
nothing of the run can be in the log yet. Any other start (perhaps a re-delivery after a crash,
the run's steps already in the log) is done once run.started is written, and the run waits for
the processors' `resume_run`, which the processors send for every run.started; for a run
started here that resume arrives during or after the first pass and, caused by the
run.started the pass began from, brings nothing new: it is dropped (done; if the pass is
interrupted, the start's uncommitted offset holds the resume's back, and both come again).
`resume_run` reads the run's partition after the command's history position, merges what it
finds (producers.history), and, unless the run has ended, executes a pass (producers.context).
The read is skipped when the history's position is at or past this worker's newest
acknowledged write of the run: the fold has then seen all of it, and no other worker can have
written since (these memories are forgotten whenever partitions are taken away; the resume's
own event and anything the processors write later come with resumes of their own).
`cancel_run` stops the run's pass if it executes here, at once, writing nothing more (whoever
cancelled wrote `run.cancelled`). A `resume_run` for a run whose pass is in flight here is held
and handled when that pass ends: it may report a step that resolved after the pass read its
history (a parallel branch's sleep woke while another branch still ran), and dropping it would
leave the run parked for good.

**Commits (the failure protocol).** A command is done when its run has parked or ended (or
the command needed nothing). Per partition, the committed offset is the one after the highest
offset below which every command is done, so a command in flight holds back the commits of
later ones. If the worker dies, every command not done is delivered again: its pass re-reads
the log, returns what was checkpointed and re-executes only the step that was in flight (it
had `step.started` but no outcome): at-least-once for that step, exactly-once for the rest.
A duplicate that finds the run parked or ended writes nothing new.

**Graceful stop.** Fetching stops; every pass lets its executing steps write their outcome and
stops at the next step boundary, writing `run.interrupted`; those commands are not committed,
so the next worker of the app resumes the runs (a pass whose history shows the interruption
writes `run.resumed` first). A pass still executing after `stop_timeout` is abandoned (its
step will run again). Partitions taken away by a rebalance are handed over the same way.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from steplog.errors import InvalidEventError, WorkflowNotFoundError
from steplog.schemas.codec import decode_command, encode
from steplog.schemas.commands import CancelRun, Command, ResumeRun, StartRun
from steplog.schemas.events import (
    Event,
    RunFailed,
    RunFailedPayload,
    RunStarted,
    RunStartedPayload,
    new_event_id,
)
from steplog.schemas.ids import derived_id
from steplog.settings import Settings

from .app import App
from .context import (
    PassOutcome,
    PassResult,
    RunPass,
    SignalsWrite,
    TriggerEvent,
    WorkflowEvent,
    error_info,
)
from .history import RunHistory, RunStart
from .run_log import RunLogReader

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("steplog.worker")

DEFAULT_CONCURRENCY: Final = 200
_REMEMBERED_RUNS: Final = 20_000
"""Runs whose start (input, trigger), fast start and newest write are kept, so that their
next resume need not search or read the log."""
_REMEMBERED_CANCELS: Final = 100_000
_RETRY_DELAYS: Final = (0.1, 0.5, 1.0, 2.0, 5.0)
_REVOKE_GRACE: Final = 20.0


@dataclass
class WorkerStats:
    """What a worker did since it started (for logs, tests and health checks)."""

    commands: int = 0
    runs_started: int = 0
    passes: int = 0
    completed: int = 0
    failed: int = 0
    parked: int = 0
    interrupted: int = 0
    cancelled: int = 0
    aborted: int = 0
    log_reads: int = 0
    """Resumes that read the run's log after their history's position."""


@dataclass(frozen=True)
class _Token:
    """One command's place in the commands topic."""

    tp: TopicPartition
    offset: int


class _PartitionOffsets:
    """The commands of one partition not yet done, and where its commit point is."""

    def __init__(self) -> None:
        self._open: OrderedDict[int, bool] = OrderedDict()

    def add(self, offset: int) -> None:
        self._open[offset] = False

    def finish(self, offset: int) -> int | None:
        """Mark a command done; the new commit offset if the commit point moved."""
        if offset not in self._open:
            return None
        self._open[offset] = True
        commit = None
        while self._open:
            first, done = next(iter(self._open.items()))
            if not done:
                break
            self._open.popitem(last=False)
            commit = first + 1
        return commit


@dataclass
class _RunHandle:
    """A run this worker is handling: its pass, its commands, and what arrived meanwhile."""

    run_id: str
    tokens: list[_Token] = field(default_factory=list)
    run_pass: RunPass | None = None
    held: ResumeRun | None = None
    held_tokens: list[_Token] = field(default_factory=list)
    cancelled: bool = False
    task: asyncio.Task[None] | None = None


class _KafkaRunSink:
    """A pass's writes: events keyed by run id, signals-topic messages keyed by name.
    `on_written(run_id, partition, offset)` hears where each event was acknowledged."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        settings: Settings,
        on_written: Callable[[str, int, int], None],
    ) -> None:
        self._producer = producer
        self._events = settings.topics.events
        self._signals = settings.topics.signals
        self._max_bytes = settings.max_event_bytes
        self._on_written = on_written

    async def send_event(self, event: WorkflowEvent) -> Awaitable[object]:
        value = encode(event, max_bytes=self._max_bytes)
        future: asyncio.Future[Any] = await self._producer.send(
            self._events, value=value, key=event.run_id.encode()
        )
        future.add_done_callback(partial(self._acknowledged, event.run_id))
        return future

    def _acknowledged(self, run_id: str, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            written = future.result()
            self._on_written(run_id, written.partition, written.offset)

    async def send_signal(self, message: SignalsWrite) -> Awaitable[object]:
        value = encode(message, max_bytes=self._max_bytes)
        future: Awaitable[object] = await self._producer.send(
            self._signals, value=value, key=message.name.encode()
        )
        return future


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker, consumer: AIOKafkaConsumer) -> None:
        self._worker = worker
        self._consumer = consumer  # the first assignment may come before start() returns

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._hand_over(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker._note_first_deliveries(self._consumer, assigned)
        partitions = sorted(tp.partition for tp in assigned)
        log.info("worker %s: assigned partitions %s", self._worker.app.name, partitions)


class Worker:
    """Executes the runs of one app (module docstring).

    - concurrency: runs handled at once (fetching pauses while they are all busy).
    - stop_timeout: seconds a graceful stop waits for executing steps before abandoning them.
    - fetch_max_wait_ms: how long the broker may hold a fetch of commands that finds none. A
      fetch returns as soon as a command arrives, so this is not latency; it bounds how long
      a partition resumed (after `concurrency` was reached) waits for the fetch in flight,
      and each empty fetch costs the broker: at 5 ms an idle worker cost it a fifth of a core.
    - linger_ms: the producer's batching delay; 0 writes each checkpoint at once.
    - session_timeout_ms / heartbeat_interval_ms: the consumer group's liveness (a killed
      worker's commands go to another after the session timeout).
    """

    def __init__(
        self,
        app: App,
        *,
        settings: Settings | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        stop_timeout: float = 30.0,
        fetch_max_wait_ms: int = 100,
        linger_ms: int = 0,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
    ) -> None:
        if concurrency < 1:
            raise ValueError(
                f"concurrency: {concurrency} is not a number of runs; expected 1 or more"
            )
        self.app = app
        self.settings = settings or app.settings
        self.concurrency = concurrency
        self.stop_timeout = stop_timeout
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.linger_ms = linger_ms
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.group_id = f"{self.settings.topic_prefix}worker.{app.name}"
        self.stats = WorkerStats()
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: RunLogReader | None = None
        self._sink: _KafkaRunSink | None = None
        self._runs: dict[str, _RunHandle] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._offsets: dict[TopicPartition, _PartitionOffsets] = {}
        self._to_commit: dict[TopicPartition, int] = {}
        self._commit_wanted = asyncio.Event()
        self._room = asyncio.Event()
        self._starts: OrderedDict[str, RunStart] = OrderedDict()
        # Runs whose start_run is being handled: a resume of one (sent by a test or a tool
        # before the run.started is even written) waits for it instead of finding no start.
        self._starting: dict[str, asyncio.Future[None]] = {}
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self._first_delivery_from: dict[TopicPartition, int] = {}
        """Per assigned partition, its end offset at assignment (module docstring)."""
        self._fast_started: OrderedDict[str, tuple[int, int]] = OrderedDict()
        """Runs started here at once, and where their run.started is."""
        self._written_at: OrderedDict[str, tuple[int, int]] = OrderedDict()
        """Per run, where this worker's newest acknowledged write of it is (module doc)."""
        self._fetcher: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self._started = False
        self._stopping = False
        self._stopped = asyncio.Event()

    # ----------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Register the app's workflows, then start consuming commands (returns once the
        consumer is started; commands are handled in the background)."""
        if self._started:
            return
        self._started = True
        settings = self.settings
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=f"steplog-worker-{self.app.name}",
            acks="all",
            enable_idempotence=True,
            linger_ms=self.linger_ms,
            max_request_size=settings.max_event_bytes + 64 * 1024,
        )
        await producer.start()
        self._producer = producer
        self._sink = _KafkaRunSink(producer, settings, self._note_written)
        try:
            await self._register()
            self._reader = RunLogReader(
                settings.kafka_bootstrap, settings.topics.events,
                max_event_bytes=settings.max_event_bytes,
            )
            await self._reader.start()
            consumer = AIOKafkaConsumer(
                bootstrap_servers=settings.kafka_bootstrap,
                client_id=f"steplog-worker-{self.app.name}",
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=self.fetch_max_wait_ms,
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=self.heartbeat_interval_ms,
                max_partition_fetch_bytes=max(settings.max_event_bytes, 1024 * 1024),
            )
            consumer.subscribe([settings.topics.commands], listener=_Rebalance(self, consumer))
            await consumer.start()
            self._consumer = consumer
        except BaseException:
            await self._close_clients()
            raise
        self._fetcher = asyncio.create_task(self._fetch(), name=f"steplog worker {self.app.name}")
        self._fetcher.add_done_callback(_log_failure)
        self._committer = asyncio.create_task(self._commit_loop(), name="steplog worker commits")
        log.info(
            "worker for app %r (project %r) started: %d workflow(s), group %s",
            self.app.name, self.app.project, len(self.app.workflows), self.group_id,
        )

    async def stop(self) -> None:
        """Stop gracefully (module docstring); idempotent."""
        if not self._started:
            return
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            if self._fetcher is not None:
                self._fetcher.cancel()
                await asyncio.gather(self._fetcher, return_exceptions=True)
            for handle in self._runs.values():
                if handle.run_pass is not None:
                    handle.run_pass.request_stop("interrupt", "worker stopped")
            if self._handlers:
                _, pending = await asyncio.wait(set(self._handlers), timeout=self.stop_timeout)
                if pending:
                    log.warning("%d run(s) still executing after %.0fs: abandoning them",
                                len(pending), self.stop_timeout)
                    for handle in self._runs.values():
                        if handle.run_pass is not None:
                            handle.run_pass.request_stop("abandon", "worker stopped")
                    await asyncio.wait(pending, timeout=10)
            await self._commit_now()
            if self._committer is not None:
                self._committer.cancel()
                await asyncio.gather(self._committer, return_exceptions=True)
        finally:
            await self._close_clients()
            self._stopped.set()
            log.info("worker for app %r stopped", self.app.name)

    def run(self) -> None:
        """Run until SIGINT or SIGTERM, then stop gracefully (blocking)."""
        asyncio.run(self._run_until_signalled())

    async def _run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        # Sync steps run in threads (asyncio.to_thread): enough of them for the runs in flight.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=min(self.concurrency, 256)))
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await self.start()
        assert self._fetcher is not None
        waiter = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({waiter, self._fetcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            fetch_error = (
                self._fetcher.exception()
                if self._fetcher.done() and not self._fetcher.cancelled()
                else None
            )
            await self.stop()
        if fetch_error is not None:
            raise fetch_error

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _close_clients(self) -> None:
        for name, client in (
            ("consumer", self._consumer), ("reader", self._reader), ("producer", self._producer)
        ):
            if client is None:
                continue
            try:
                await client.stop()
            except Exception:
                log.exception("stopping the worker's %s failed", name)

    async def _register(self) -> None:
        assert self._producer is not None
        topics, max_bytes = self.settings.topics, self.settings.max_event_bytes
        acks = []
        for definition in self.app.definitions():
            acks.append(await self._producer.send(
                topics.flows, value=encode(definition, max_bytes=max_bytes),
                key=definition.key.encode(),
            ))
        for trigger in self.app.trigger_registrations():
            acks.append(await self._producer.send(
                topics.signals, value=encode(trigger, max_bytes=max_bytes),
                key=trigger.name.encode(),
            ))
        await asyncio.gather(*acks)

    # ------------------------------------------------------------------------ fetching

    async def _fetch(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        paused: set[TopicPartition] = set()
        while True:
            room = self.concurrency - len(self._handlers)
            if room <= 0:
                paused = set(consumer.assignment())
                consumer.pause(*paused)
                self._room.clear()
                try:
                    await asyncio.wait_for(self._room.wait(), timeout=1.0)
                except TimeoutError:
                    pass
                continue
            if paused:
                consumer.resume(*(paused & consumer.assignment()))
                paused = set()
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=room)
            except KafkaError as exc:  # the consumer retries by itself; say so and go on
                log.warning("fetching commands failed: %r", exc)
                await asyncio.sleep(1.0)
                continue
            for tp, messages in batches.items():
                for message in messages:
                    self._accept(tp, message.offset, message.value)

    def _accept(self, tp: TopicPartition, offset: int, value: bytes) -> None:
        self.stats.commands += 1
        self._offsets.setdefault(tp, _PartitionOffsets()).add(offset)
        token = _Token(tp, offset)
        try:
            limit = max(self.settings.max_event_bytes, len(value))
            command = decode_command(value, max_bytes=limit)
        except InvalidEventError as exc:
            log.warning("skipping an invalid command at %s offset %d: %s", tp, offset, exc)
            self._done(token)
            return
        if not self._addressed_here(command):
            self._done(token)
            return
        if isinstance(command, CancelRun):
            self._cancel(command)
            self._done(token)
            return
        if isinstance(command, StartRun):
            if command.run_id not in self._starting:
                self._starting[command.run_id] = asyncio.get_running_loop().create_future()
            if self._first_delivery(token) and command.workflow in self.app.workflows and (
                command.run_id not in self._runs
            ):
                starting = _RunHandle(command.run_id, tokens=[token])
                self._runs[command.run_id] = starting
                starting.task = self._spawn(self._start_and_execute(starting, command))
            else:
                self._spawn(self._start_run(command, token))
            return
        if _caused_by(command, self._fast_started.get(command.run_id)):
            self._done(token)  # the run's first pass began from that run.started
            return
        handle = self._runs.get(command.run_id)
        if handle is not None:
            # Held until the pass in flight ends (module docstring); the newest suffices.
            handle.held = command
            handle.held_tokens.append(token)
            return
        handle = _RunHandle(command.run_id, tokens=[token])
        self._runs[command.run_id] = handle
        handle.task = self._spawn(self._resume(handle, command))

    def _first_delivery(self, token: _Token) -> bool:
        first_from = self._first_delivery_from.get(token.tp)
        return first_from is not None and token.offset >= first_from

    async def _note_first_deliveries(
        self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]
    ) -> None:
        if not assigned:
            return
        try:
            ends = await consumer.end_offsets(list(assigned))
        except KafkaError as exc:  # no fast starts on these partitions: still correct
            log.warning("reading the end offsets of %s failed: %r", sorted(assigned), exc)
            return
        self._first_delivery_from.update(ends)

    def _addressed_here(self, command: Command) -> bool:
        if command.project != self.app.project:
            return False
        if command.app is not None:
            return command.app == self.app.name
        if isinstance(command, CancelRun):
            return True  # only ever stops a run executing here
        # No app: a start of one of our workflows (a duplicate run.started elsewhere is
        # harmless); a resume needs one, or two apps could execute the run at once.
        return isinstance(command, StartRun) and command.workflow in self.app.workflows

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._handlers.add(task)
        task.add_done_callback(self._handler_done)
        return task

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._handlers.discard(task)
        self._room.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("a command handler failed", exc_info=task.exception())

    # --------------------------------------------------------------------- the commands

    async def _start_run(self, command: StartRun, token: _Token) -> None:
        try:
            if await self._write_run_started(command) is not None:
                self._done(token)
        finally:
            self._started_written(command.run_id)

    async def _start_and_execute(self, handle: _RunHandle, command: StartRun) -> None:
        """A first delivery: write run.started, then the first pass at once (docstring)."""
        try:
            written = await self._write_run_started(command)
        finally:
            self._started_written(command.run_id)
        if written is None or written == _NOWHERE:
            # Stopping (the start stays uncommitted and is delivered again), or a start that
            # cannot be carried out (logged; done).
            self._runs.pop(handle.run_id, None)
            if written == _NOWHERE:
                for token in handle.tokens:
                    self._done(token)
            return
        self._remember(self._fast_started, command.run_id, written)
        first_pass = ResumeRun(
            command_id=derived_id("fast-start", command.run_id), project=command.project,
            run_id=command.run_id, ts=_now(), reason="started", workflow=command.workflow,
            app=self.app.name,
        )
        await self._resume(handle, first_pass)

    def _started_written(self, run_id: str) -> None:
        started = self._starting.pop(run_id, None)
        if started is not None and not started.done():
            started.set_result(None)

    async def _write_run_started(self, command: StartRun) -> tuple[int, int] | None:
        """Write the start (run.started, or run.failed for a workflow not defined here);
        where it was written, or None if the worker stopped first. A start that cannot be
        carried out is logged and its place is (-1, -1): done, nothing to execute."""
        run_id = command.run_id
        workflow = self.app.workflows.get(command.workflow)
        event: RunStarted | RunFailed
        if workflow is None:
            error = WorkflowNotFoundError(self._not_defined(command.workflow))
            log.error("start_run %s: %s", run_id, error)
            event = RunFailed(
                event_id=new_event_id(), project=self.app.project, flow=command.workflow,
                run_id=run_id, ts=_now(), seq=_micros(),
                payload=RunFailedPayload(error=error_info(error)),
            )
        else:
            event = RunStarted(
                event_id=derived_id("run-start", run_id),
                project=self.app.project,
                flow=command.workflow,
                run_id=run_id,
                ts=_now(),
                seq=_micros(),
                payload=RunStartedPayload(
                    app=self.app.name,
                    input=command.input,
                    trigger=command.trigger,
                    parent_run_id=command.parent_run_id,
                    parent_step_key=command.parent_step_key,
                    parent_flow=command.parent_flow,
                    parent_step_attempt=command.parent_step_attempt,
                    retrigger_of=command.retrigger_of,
                ),
            )
        try:
            written = await self._write_with_retries(event)
        except Exception:  # see _resume: a command that cannot be carried out is done
            log.exception("start_run %s: cannot be carried out", run_id)
            return _NOWHERE
        if written is not None and workflow is not None:
            self._remember(self._starts, run_id, RunStart.from_command(command))
            self.stats.runs_started += 1
        return written

    async def _resume(self, handle: _RunHandle, command: ResumeRun) -> None:
        keep = False  # leave the commands uncommitted (the run goes on elsewhere)
        attempt = 0
        try:
            while True:
                try:
                    result = await self._resume_once(handle, command)
                except Exception:
                    # A bug, or a command that cannot be carried out (a partition that does
                    # not exist): holding its offset back would stop every later command of
                    # the partition from being committed, so it is logged and counted done.
                    log.exception("resume_run %s: cannot be carried out", handle.run_id)
                    result = None
                if result is not None and result.outcome is PassOutcome.ABORTED:
                    self.stats.aborted += 1
                    if self._stopping:
                        keep = True
                        break
                    delay = _RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)]
                    attempt += 1
                    log.warning("run %s: a write failed (%r); again in %.1fs",
                                handle.run_id, result.error, delay)
                    await asyncio.sleep(delay)
                    continue
                if result is _NOT_RUN or (
                    result is not None and result.outcome is PassOutcome.INTERRUPTED
                ):
                    keep = True
                    break
                if handle.held is not None and not handle.cancelled and not self._stopping:
                    command, handle.held = handle.held, None
                    handle.tokens.extend(handle.held_tokens)
                    handle.held_tokens = []
                    continue
                break
        finally:
            self._runs.pop(handle.run_id, None)
        if not keep:
            for token in handle.tokens:
                self._done(token)
        if handle.cancelled:
            for token in handle.held_tokens:  # resumes of a cancelled run need nothing
                self._done(token)

    async def _resume_once(self, handle: _RunHandle, command: ResumeRun) -> PassResult | None:
        """One pass for the command; None when there was nothing to do."""
        reader, sink = self._reader, self._sink
        assert reader is not None and sink is not None
        run_id = command.run_id
        starting = self._starting.get(run_id)
        if starting is not None:
            await asyncio.shield(starting)
        try:
            partition = (
                command.history_partition
                if command.history_partition is not None
                else reader.partition_of(run_id)
            )
            events: list[Event] = []
            if command.history_offset is not None and not self._fold_saw_our_writes(
                run_id, partition, command.history_offset
            ):
                self.stats.log_reads += 1
                events, _ = await reader.read_after(partition, command.history_offset, run_id)
            history = RunHistory.from_records(command.history)
            history.merge(events)
            if history.ended is not None or run_id in self._cancelled or handle.cancelled:
                return None
            start = history.start or self._starts.get(run_id)
            if start is None:
                before = None if command.history_offset is None else command.history_offset + 1
                start = await reader.find_run_start(partition, run_id, before)
            if start is None:
                log.error("resume_run %s: its run.started is not on partition %d of %s; "
                          "without it the run's input is unknown, so it cannot execute",
                          run_id, partition, self.settings.topics.events)
                return None
            self._remember(self._starts, run_id, start)
        except (KafkaError, OSError) as exc:
            return PassResult(PassOutcome.ABORTED, error=exc)
        if self._stopping:
            return _NOT_RUN
        name = command.workflow or start.workflow
        workflow = self.app.workflows.get(name)
        if workflow is None:
            error = WorkflowNotFoundError(self._not_defined(name))
            log.error("resume_run %s: %s", run_id, error)
            failed = RunFailed(
                event_id=new_event_id(), project=self.app.project, flow=name, run_id=run_id,
                ts=_now(), seq=max(history.last_seq + 1, _micros()),
                payload=RunFailedPayload(error=error_info(error)),
            )
            return None if await self._write_with_retries(failed) is not None else _NOT_RUN
        trigger = start.trigger
        run_pass = RunPass(
            fn=workflow.fn,
            workflow=name,
            project=self.app.project,
            app=self.app.name,
            run_id=run_id,
            history=history,
            event=TriggerEvent(
                name=trigger.name if trigger else None,
                data=start.input,
                id=trigger.event_id if trigger else None,
            ),
            sink=sink,
            retries=workflow.retries,
            max_event_bytes=self.settings.max_event_bytes,
        )
        handle.run_pass = run_pass
        try:
            self.stats.passes += 1
            result = await run_pass.execute()
        finally:
            handle.run_pass = None
        self._count(result)
        if result.outcome is PassOutcome.FAILED:
            log.info("run %s of %s failed: %r", run_id, name, result.error)
        return result

    def _note_written(self, run_id: str, partition: int, offset: int) -> None:
        held = self._written_at.get(run_id)
        if held is None or held[0] != partition or held[1] < offset:
            self._remember(self._written_at, run_id, (partition, offset))

    def _fold_saw_our_writes(self, run_id: str, partition: int, offset: int) -> bool:
        """Whether a history at (partition, offset) covers every write of the run by this
        worker, so that no worker's write can follow it in the log (module docstring)."""
        written = self._written_at.get(run_id)
        return written is not None and written[0] == partition and written[1] <= offset

    def _cancel(self, command: CancelRun) -> None:
        self._remember(self._cancelled, command.run_id, None)
        handle = self._runs.get(command.run_id)
        if handle is None:
            return
        handle.cancelled = True
        if handle.run_pass is not None:
            handle.run_pass.request_stop("cancel", command.reason or "cancelled")

    async def _write_with_retries(self, event: WorkflowEvent) -> tuple[int, int] | None:
        """Write one event, retrying while the worker runs; where it was written (partition,
        offset), or None if it gave up (stopping)."""
        assert self._sink is not None
        for attempt in range(1_000_000):
            try:
                written = await (await self._sink.send_event(event))
                return written.partition, written.offset  # type: ignore[attr-defined]
            except (KafkaError, OSError) as exc:
                if self._stopping:
                    return None
                delay = _RETRY_DELAYS[min(attempt, len(_RETRY_DELAYS) - 1)]
                log.warning("writing %s of run %s failed (%r); again in %.1fs",
                            event.type, event.run_id, exc, delay)
                await asyncio.sleep(delay)
        return None

    def _not_defined(self, name: str) -> str:
        defined = ", ".join(sorted(self.app.workflows)) or "none"
        return f"workflow {name!r} is not defined in app {self.app.name!r} (it defines: {defined})"

    def _count(self, result: PassResult) -> None:
        match result.outcome:
            case PassOutcome.COMPLETED:
                self.stats.completed += 1
            case PassOutcome.FAILED:
                self.stats.failed += 1
            case PassOutcome.PARKED:
                self.stats.parked += 1
            case PassOutcome.INTERRUPTED:
                self.stats.interrupted += 1
            case PassOutcome.CANCELLED:
                self.stats.cancelled += 1
            case PassOutcome.ABORTED:
                pass  # counted where the retry is decided

    @staticmethod
    def _remember(memory: OrderedDict[str, Any], key: str, value: Any) -> None:
        memory[key] = value
        memory.move_to_end(key)
        limit = _REMEMBERED_CANCELS if value is None else _REMEMBERED_RUNS
        while len(memory) > limit:
            memory.popitem(last=False)

    # ------------------------------------------------------------------------- commits

    def _done(self, token: _Token) -> None:
        offsets = self._offsets.get(token.tp)
        if offsets is None:
            return  # the partition was handed over meanwhile
        commit = offsets.finish(token.offset)
        if commit is not None:
            self._to_commit[token.tp] = commit
            self._commit_wanted.set()

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            await self._commit_now()

    async def _commit_now(self) -> None:
        consumer = self._consumer
        if consumer is None or not self._to_commit:
            return
        wanted, self._to_commit = self._to_commit, {}
        assigned = consumer.assignment()
        offsets = {tp: offset for tp, offset in wanted.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            # Not fatal: a later commit covers these offsets, and at worst the commands are
            # delivered again and find their runs parked or ended.
            log.warning("committing %s failed: %r", offsets, exc)

    async def _hand_over(self, revoked: set[TopicPartition]) -> None:
        """Partitions are being taken away: stop their runs at a step boundary (interrupted,
        uncommitted: the new owner resumes them), commit what is done, forget the rest."""
        if not revoked:
            return
        handles = [
            handle for handle in self._runs.values()
            if any(token.tp in revoked for token in handle.tokens)
        ]
        for handle in handles:
            if handle.run_pass is not None:
                handle.run_pass.request_stop("interrupt", "partition reassigned")
        tasks = [handle.task for handle in handles if handle.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=_REVOKE_GRACE)
        await self._commit_now()
        for tp in revoked:
            self._offsets.pop(tp, None)
            self._to_commit.pop(tp, None)
        # Another worker may execute these runs now: what this one wrote is no longer the
        # whole story of any of them (and which runs were on `revoked` is not kept).
        self._fast_started.clear()
        self._written_at.clear()


_NOWHERE: Final = (-1, -1)
"""Where a start that could not be carried out was written: nowhere, and it is done."""


def _caused_by(command: Command, started_at: tuple[int, int] | None) -> bool:
    """Whether the resume was sent for the run.started a fast start wrote (so the run's
    first pass began from everything the resume knows)."""
    return (
        isinstance(command, ResumeRun)
        and started_at is not None
        and (command.history_partition, command.history_offset) == started_at
    )


_NOT_RUN: Final = PassResult(PassOutcome.INTERRUPTED)
"""The worker is stopping: the command was not executed and stays uncommitted."""


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the worker stopped fetching commands", exc_info=task.exception())


def _now() -> datetime:
    return datetime.now(UTC)


def _micros() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)
