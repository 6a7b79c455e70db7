"""How a worker carries out the commands addressed to it: it writes starts and runs passes.

A `start_run` that flow control must decide first (written outside the processors, for a
workflow whose flow control limits starts) is handed to the processors as a `run.scheduled`
instead (producers.held_starts). Any other `start_run` writes the run's `run.started` (its
event id derived from the run id, so a
duplicated start is a duplicate event; it names the runner the run is pinned to, if any, so
that the processors' commands for the run name it too). A start this worker is the first to
see executes its first pass at once, with an empty history: a start_run written after the
partition was assigned here (its offset is at least the partition's end offset at assignment)
cannot have been handled by a previous owner, so nothing of the run can be in the log yet,
unless this worker handled the run already: commands are at-least-once (the processors send
a start again when they are not sure it went out), and a copy of a start this worker carried
out is dropped (same command id), while a start of a run it knows (started or resumed here)
takes the path below, never a first pass from an empty history, which would run the steps
again. Both memories are bounded (recent_runs.REMEMBERED_RUNS runs). Any other start
(perhaps a re-delivery after a crash, the run's steps already in the log) is done once
run.started is written, and the run waits for the processors' `resume_run`, which the
processors send for every run.started; for a run started here that resume arrives during or
after the first pass and, caused by the run.started the pass began from, brings nothing new:
it is dropped (done; if the pass is interrupted, the start's uncommitted offset holds the
resume's back, and both come again).

`resume_run` reads the run's partition after the command's history position, merges what it
finds (producers.history), and, unless the run has ended, executes a pass
(producers.run_pass). The read is skipped when the history's position is at or past this
worker's newest acknowledged write of the run: the fold has then seen all of it, and no other
worker can have written since (these memories are forgotten whenever partitions are taken
away; the resume's own event and anything the processors write later come with resumes of
their own).

`cancel_run` stops the run's pass if it executes here, at once, writing nothing more (whoever
cancelled wrote `run.cancelled`). A `resume_run` for a run whose pass is in flight here is held
and handled when that pass ends: it may report a step that resolved after the pass read its
history (a parallel branch's sleep woke while another branch still ran), and dropping it would
leave the run parked for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from steplog.errors import WorkflowNotFoundError
from steplog.metrics import metrics
from steplog.schemas.commands import CancelRun, ResumeRun, StartRun
from steplog.schemas.events import (
    Event,
    RunFailed,
    RunFailedPayload,
    RunScheduled,
    RunStarted,
    RunStartedPayload,
    new_event_id,
)
from steplog.schemas.ids import derived_id
from steplog.schemas.signals import WaitEnded, WaitRegistered
from steplog.redaction import secret_rules
from steplog.settings import Settings

from .cancel_on import cancel_registrations, cancel_releases
from .command_commits import CommandCommits, CommandToken
from .context import TriggerEvent
from .held_starts import scheduled_instead
from .history import RunHistory, RunStart
from .kafka_run_sink import RETRY_DELAYS, KafkaRunSink
from .pass_branches import StopMode
from .recent_runs import REMEMBERED_CANCELS, REMEMBERED_RUNS, remember
from .recorded_errors import error_info
from .run_log import RunLogReader
from .run_pass import PassOutcome, PassResult, RunPass
from .workflow import ServedApp, Workflow

__all__ = ["RunExecutor", "RunInFlight", "WorkerStats"]

log = logging.getLogger("steplog.worker")

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


@dataclass
class RunInFlight:
    """A run this worker is handling: its pass, its commands, and what arrived meanwhile."""

    run_id: str
    tokens: list[CommandToken] = field(default_factory=list)
    run_pass: RunPass | None = None
    held: ResumeRun | None = None
    held_tokens: list[CommandToken] = field(default_factory=list)
    cancelled: bool = False
    task: asyncio.Task[None] | None = None


class RunExecutor:
    """The runs in flight on one worker and the tasks that handle its commands (module
    docstring). `sink` and `reader` are set once the worker's clients are started."""

    def __init__(
        self,
        app: ServedApp,
        settings: Settings,
        commits: CommandCommits,
        stats: WorkerStats,
        stopping: Callable[[], bool],
        runner: str,
    ) -> None:
        self.app = app
        self.runner = runner
        """This worker's runner name: commands pinned to another runner are not for it."""
        self.settings = settings
        self._commits = commits
        self.stats = stats
        self._stopping = stopping
        self.sink: KafkaRunSink | None = None
        self.reader: RunLogReader | None = None
        self.runs: dict[str, RunInFlight] = {}
        self.handlers: set[asyncio.Task[None]] = set()
        self.room = asyncio.Event()
        """Set whenever a handler ends (fetching may have room again)."""
        self._starts: OrderedDict[str, RunStart] = OrderedDict()
        # Runs whose start_run is being handled: a resume of one (sent by a test or a tool
        # before the run.started is even written) waits for it instead of finding no start.
        self._starting: dict[str, asyncio.Future[None]] = {}
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self._carried_out: OrderedDict[str, None] = OrderedDict()
        """Command ids of the starts whose run.started this worker wrote."""
        self._fast_started: OrderedDict[str, tuple[int, int]] = OrderedDict()
        """Runs started here at once, and where their run.started is."""
        self._not_yet_passed: OrderedDict[str, datetime] = OrderedDict()
        """Runs started here whose first pass has not begun: their start_run's ts (the
        schedule-to-start histogram: from it to the first pass, whichever path it takes)."""

    # ------------------------------------------------------------ the commands, as they come

    def start(self, command: StartRun, token: CommandToken, *, first_delivery: bool) -> None:
        workflow = self.app.workflows.get(command.workflow)
        scheduled = (None if workflow is None
                     else scheduled_instead(command, workflow, self.app.name))
        if scheduled is not None:  # flow control decides when it starts (held_starts.py)
            self._spawn(self._hand_to_gate(scheduled, token))
            return
        if command.command_id in self._carried_out:
            self._commits.done(token)  # a copy of a start carried out here (module docstring)
            return
        run_id = command.run_id
        known = run_id in self._starting or run_id in self.runs or run_id in self._starts
        if run_id not in self._starting:
            self._starting[run_id] = asyncio.get_running_loop().create_future()
        if first_delivery and command.workflow in self.app.workflows and not known:
            starting = RunInFlight(command.run_id, tokens=[token])
            self.runs[command.run_id] = starting
            starting.task = self._spawn(self._start_and_execute(starting, command))
        else:
            self._spawn(self._start_run(command, token))

    def resume(self, command: ResumeRun, token: CommandToken) -> None:
        if _caused_by(command, self._fast_started.get(command.run_id)):
            self._commits.done(token)  # the run's first pass began from that run.started
            return
        handle = self.runs.get(command.run_id)
        if handle is not None:
            # Held until the pass in flight ends (module docstring); the newest suffices.
            handle.held = command
            handle.held_tokens.append(token)
            return
        handle = RunInFlight(command.run_id, tokens=[token])
        self.runs[command.run_id] = handle
        handle.task = self._spawn(self._resume(handle, command))

    def cancel(self, command: CancelRun) -> None:
        remember(self._cancelled, command.run_id, None, REMEMBERED_CANCELS)
        handle = self.runs.get(command.run_id)
        if handle is None:
            return
        handle.cancelled = True
        if handle.run_pass is not None:
            handle.run_pass.request_stop("cancel", command.reason or "cancelled")

    # ------------------------------------------------------------------ stopping the runs

    def stop_passes(self, mode: StopMode, reason: str) -> None:
        for handle in self.runs.values():
            if handle.run_pass is not None:
                handle.run_pass.request_stop(mode, reason)

    async def hand_over(self, revoked: set[TopicPartition]) -> None:
        """Stop the runs of partitions being taken away at a step boundary (interrupted,
        uncommitted: the new owner resumes them), and forget the fast starts."""
        handles = [
            handle for handle in self.runs.values()
            if any(token.tp in revoked for token in handle.tokens)
        ]
        for handle in handles:
            if handle.run_pass is not None:
                handle.run_pass.request_stop("interrupt", "partition reassigned")
        tasks = [handle.task for handle in handles if handle.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=_REVOKE_GRACE)

    def forget_fast_starts(self) -> None:
        # Which runs were on the revoked partitions is not kept: forget them all.
        self._fast_started.clear()

    # ------------------------------------------------------------------------- handlers

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self.handlers.add(task)
        task.add_done_callback(self._handler_done)
        return task

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self.handlers.discard(task)
        self.room.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("a command handler failed", exc_info=task.exception())

    async def _start_run(self, command: StartRun, token: CommandToken) -> None:
        try:
            if await self._write_run_started(command) is not None:
                self._commits.done(token)
        finally:
            self._started_written(command.run_id)

    async def _hand_to_gate(self, scheduled: RunScheduled, token: CommandToken) -> None:
        assert self.sink is not None
        try:
            written = await self.sink.write_with_retries(scheduled)
        except Exception:  # see _resume: a command that cannot be carried out is done
            log.exception("start_run %s: cannot be handed to flow control", scheduled.run_id)
            written = _NOWHERE
        if written is not None:  # None: stopping; delivered again
            self._commits.done(token)

    async def _start_and_execute(self, handle: RunInFlight, command: StartRun) -> None:
        """A first delivery: write run.started, then the first pass at once (docstring)."""
        try:
            written = await self._write_run_started(command)
        finally:
            self._started_written(command.run_id)
        if written is None or written == _NOWHERE:
            # Stopping (the start stays uncommitted and is delivered again), or a start that
            # cannot be carried out (logged; done).
            self.runs.pop(handle.run_id, None)
            if written == _NOWHERE:
                for token in handle.tokens:
                    self._commits.done(token)
            return
        remember(self._fast_started, command.run_id, written, REMEMBERED_RUNS)
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
        assert self.sink is not None
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
                    runner=command.runner,
                ),
            )
        try:
            written = await self.sink.write_with_retries(event)
        except Exception:  # see _resume: a command that cannot be carried out is done
            log.exception("start_run %s: cannot be carried out", run_id)
            return _NOWHERE
        if written is not None and workflow is not None and workflow.cancel_on:
            await self._register_cancels(command, workflow)
        if written is not None and workflow is not None:
            remember(self._starts, run_id, RunStart.from_command(command), REMEMBERED_RUNS)
            remember(self._carried_out, command.command_id, None, REMEMBERED_RUNS)
            remember(self._not_yet_passed, run_id, command.ts, REMEMBERED_RUNS)
            self.stats.runs_started += 1
        return written

    async def _resume(self, handle: RunInFlight, command: ResumeRun) -> None:
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
                    if self._stopping():
                        keep = True
                        break
                    delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
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
                if handle.held is not None and not handle.cancelled and not self._stopping():
                    command, handle.held = handle.held, None
                    handle.tokens.extend(handle.held_tokens)
                    handle.held_tokens = []
                    continue
                break
        finally:
            self.runs.pop(handle.run_id, None)
        if not keep:
            for token in handle.tokens:
                self._commits.done(token)
        if handle.cancelled:
            for token in handle.held_tokens:  # resumes of a cancelled run need nothing
                self._commits.done(token)

    async def _resume_once(self, handle: RunInFlight, command: ResumeRun) -> PassResult | None:
        """One pass for the command; None when there was nothing to do."""
        reader, sink = self.reader, self.sink
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
            if command.history_offset is not None and not sink.fold_saw_our_writes(
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
            remember(self._starts, run_id, start, REMEMBERED_RUNS)
        except (KafkaError, OSError) as exc:
            return PassResult(PassOutcome.ABORTED, error=exc)
        if self._stopping():
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
            return None if await sink.write_with_retries(failed) is not None else _NOT_RUN
        run_pass = RunPass(
            fn=workflow.fn,
            workflow=name,
            project=self.app.project,
            app=self.app.name,
            run_id=run_id,
            history=history,
            event=TriggerEvent.of_start(start),
            sink=sink,
            retries=workflow.retries,
            max_event_bytes=self.settings.max_event_bytes,
            secrets=secret_rules(self.settings.redact_keys),
            runner=self.runner,
        )
        handle.run_pass = run_pass
        commanded = self._not_yet_passed.pop(run_id, None)
        if commanded is not None:
            metrics().schedule_to_start_seconds.labels(name).observe(
                max((_now() - commanded).total_seconds(), 0.0)
            )
        in_flight = metrics().worker_steps_in_flight.labels(self.app.name)
        in_flight.inc()
        try:
            self.stats.passes += 1
            result = await run_pass.execute()
        finally:
            handle.run_pass = None
            in_flight.dec()
        self._count(result)
        if workflow.cancel_on and result.outcome in (PassOutcome.COMPLETED, PassOutcome.FAILED):
            await self._release_cancels(workflow, run_id)
        if result.outcome is PassOutcome.FAILED:
            log.info("run %s of %s failed: %r", run_id, name, result.error)
        return result

    async def _register_cancels(self, command: StartRun, workflow: Workflow) -> None:
        """The run's cancel_on registrations (producers/cancel_on.py), acknowledged before its
        first pass. Written again for a start handled again: duplicates, dropped."""
        event = TriggerEvent.of_start(RunStart.from_command(command))
        registrations = cancel_registrations(
            workflow.cancel_on, project=self.app.project, app=self.app.name,
            workflow=workflow.name, run_id=command.run_id,
            trigger_event=event.as_document(), now=_now(),
        )
        await self._send_signals(command.run_id, registrations)

    async def _release_cancels(self, workflow: Workflow, run_id: str) -> None:
        releases = cancel_releases(workflow.cancel_on, project=self.app.project,
                                   workflow=workflow.name, run_id=run_id, now=_now())
        await self._send_signals(run_id, releases)

    async def _send_signals(
        self, run_id: str, messages: Sequence[WaitRegistered | WaitEnded]
    ) -> None:
        # Not retried: a registration lost makes the run uncancellable by its event, a release
        # lost leaves a registration behind (producers/cancel_on.py); neither stops the run.
        assert self.sink is not None
        try:
            acks = [await self.sink.send_signal(message) for message in messages]
            for ack in acks:
                await ack
        except (KafkaError, OSError) as exc:
            log.warning("run %s: writing its cancel_on registrations failed: %r", run_id, exc)

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


_NOWHERE: Final = (-1, -1)
"""Where a start that could not be carried out was written: nowhere, and it is done."""


def _caused_by(command: ResumeRun, started_at: tuple[int, int] | None) -> bool:
    """Whether the resume was sent for the run.started a fast start wrote (so the run's
    first pass began from everything the resume knows)."""
    return (
        started_at is not None
        and (command.history_partition, command.history_offset) == started_at
    )


_NOT_RUN: Final = PassResult(PassOutcome.INTERRUPTED)
"""The worker is stopping: the command was not executed and stays uncommitted."""


def _now() -> datetime:
    return datetime.now(UTC)


def _micros() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)
