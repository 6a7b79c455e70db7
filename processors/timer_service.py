"""The timer service: fires the due times of the runs this process holds (`TimerService`).

The heap and what a due timer writes are the fold's (processors/fold/timers.py); this module is
the task around them: it sleeps until the earliest due time, fires, and waits for Kafka's
acknowledgements.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

from steplog.metrics import metrics
from steplog.schemas.flows import WorkflowDefinition
from steplog.schemas.schedules import CronSchedule

from .dispatch import Dispatcher, Planned
from .fold.effects import ClearTimer, SetTimer, TimerKind, WriteEvent
from .fold.schedules import first_tick
from .fold.state import RunState
from .fold.timers import TimerHeap, fire_timer

__all__ = ["Clock", "TimerService"]

log = logging.getLogger("steplog.processors")

Clock = Callable[[], datetime]

_TIMER_MAX_SLEEP_S: Final = 1.0
_TIMER_RETRY_S: Final = 1.0


def utc_now() -> datetime:
    return datetime.now(UTC)


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
        clock: Clock = utc_now,
    ) -> None:
        self.heap = TimerHeap()
        # Read at each scrape: one timer service per processors process.
        metrics().timers_pending.set_function(self.heap.__len__)
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
        self._first_ticks: list[WriteEvent] = []
        """The first ticks of schedules learned since the last firing, to write."""

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

    def schedules_learned(self, definitions: Iterable[WorkflowDefinition]) -> None:
        """Workflows with a cron schedule were defined (again): write the first tick of each
        after now. Usually the tick the schedule's chain already holds, so a duplicate; the
        chain's start when the schedule is new (fold/schedules.py)."""
        now = self.clock()
        for definition in definitions:
            tick = first_tick(definition, now)
            if tick is not None:
                self._first_ticks.append(WriteEvent(tick))
        if self._first_ticks:
            self._wakeup.set()

    def _schedule_of(self, project: str, app: str, workflow: str) -> CronSchedule | None:
        definition = self.dispatcher.registry.definition(project, app, workflow)
        return None if definition is None else definition.schedule

    async def run(self) -> None:
        await self.ready.wait()
        while True:
            self._wakeup.clear()
            now = self.clock()
            if self._first_ticks:
                await self._write_first_ticks()
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

    async def _write_first_ticks(self) -> None:
        ticks, self._first_ticks = self._first_ticks, []
        try:
            await self.dispatcher.carry_out([Planned(tick) for tick in ticks])
        except Exception:
            # Kept for the next turn of the loop (at most a second away): a schedule learned
            # while Kafka is away still gets its first tick.
            log.exception("timer service: writing %d first ticks failed; again soon", len(ticks))
            self._first_ticks[:0] = ticks

    async def _fire(self, due: Sequence[tuple[bytes, SetTimer]], now: datetime) -> None:
        planned = [
            Planned(effect, run_key)
            for run_key, timer in due
            for effect in fire_timer(self.load_state(run_key), timer, now, self._schedule_of)
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
