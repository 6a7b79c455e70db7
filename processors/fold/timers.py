"""Due times of workflow runs: the heap the timer service keeps, and what a due timer writes.

Pure (the clock is an argument). The timer service (`timer_service.TimerService`) owns one `TimerHeap`:
the fold's `SetTimer` / `ClearTimer` effects update it after each batch, it is rebuilt from
every run state at start-up (`workflow.wanted_timers`: a parked run's due times are all in its
state, so nothing about timers is stored anywhere else), and when a timer is due the service
asks `fire_timer` what to write.

Deletion is lazy twice over. A cleared or replaced timer leaves its heap entry behind, dropped
when it reaches the top. And a due timer is checked against the run's state as it is *then*
(`fire_timer` returns nothing if the state no longer wants that timer), so a timer whose
ClearTimer was lost in a crash, or that was rebuilt from a state a later batch has moved on
from, writes nothing.

What a due timer writes carries an id derived from (run, step, attempt, kind)
(`ids.timer_message_id`): a timer that fires twice (a restart between firing and the fold
catching up) writes a duplicate its consumer drops.

| kind         | writes                                              | topic    |
| ------------ | --------------------------------------------------- | -------- |
| wake         | step.completed of the sleep step (output null), or  | events   |
|              | run.cancelled (expired) past its expires_after      |          |
| retry        | resume_run with the run's history                   | commands |
| start        | start_run (app: the scheduled one, else resolved),  | commands |
|              | or run.cancelled (expired); a cron tick also writes | events   |
|              | its next tick's run.scheduled (fold/schedules.py)   |          |
| wait_timeout | wait.ended(timeout), key = the event name           | signals  |
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import datetime
from itertools import count
from typing import Final

from steplog.schemas.events import StepCompleted, StepCompletedPayload
from steplog.schemas.ids import timer_message_id
from steplog.schemas.signals import WaitEnded

from .effects import Effect, SendCommand, SetTimer, TimerKind, WriteEvent, WriteSignalsMessage
from .schedules import ScheduleLookup, expired_wake_up, is_too_late, start_effects
from .state import RunState, SleepInfo, WaitInfo
from .workflow import resume_command, start_timer, step_timer, wanted_timers

__all__ = ["TimerHeap", "TimerId", "fire_timer"]

TimerId = tuple[bytes, TimerKind, str]
"""(run state key, kind, step_key): a run holds at most one timer of each kind per step."""

_COMPACT_SLACK: Final = 64


class TimerHeap:
    """Timers by id, and a min-heap of their due times with stale entries dropped lazily.

    `set` replaces a timer of the same id, `clear` forgets one; both O(log n) / O(1). The heap
    is rebuilt from the live timers when stale entries outnumber them, so memory stays
    proportional to the timers actually held.
    """

    def __init__(self) -> None:
        self._timers: dict[TimerId, tuple[int, SetTimer]] = {}
        """Each timer held, with the ticket of its current heap entry."""
        self._heap: list[tuple[datetime, int, TimerId]] = []
        self._tickets = count()

    def __len__(self) -> int:
        return len(self._timers)

    def __contains__(self, timer_id: object) -> bool:
        return timer_id in self._timers

    def get(self, timer_id: TimerId) -> SetTimer | None:
        held = self._timers.get(timer_id)
        return None if held is None else held[1]

    def set(self, run_key: bytes, timer: SetTimer, *, at: datetime | None = None) -> None:
        """Hold `timer`, due at its `due`, or at `at` when given (a timer tried again later
        keeps its own due time: that is what its run's state is checked against)."""
        timer_id = (run_key, timer.kind, timer.step_key)
        ticket = next(self._tickets)
        self._timers[timer_id] = (ticket, timer)
        heapq.heappush(self._heap, (timer.due if at is None else at, ticket, timer_id))
        if len(self._heap) > 2 * len(self._timers) + _COMPACT_SLACK:
            self._compact()

    def clear(self, run_key: bytes, kind: TimerKind, step_key: str) -> None:
        self._timers.pop((run_key, kind, step_key), None)

    def rebuild(self, states: Iterable[tuple[bytes, RunState]]) -> None:
        """Forget every timer and hold the ones `states` want (start-up, after recovery)."""
        self._timers.clear()
        self._heap.clear()
        for run_key, state in states:
            for timer in wanted_timers(state).values():
                self.set(run_key, timer)

    def next_due(self) -> datetime | None:
        """The earliest due time held, or None when there is no timer."""
        heap = self._heap
        while heap:
            due, ticket, timer_id = heap[0]
            held = self._timers.get(timer_id)
            if held is not None and held[0] == ticket:
                return due
            heapq.heappop(heap)
        return None

    def pop_due(self, now: datetime) -> list[tuple[bytes, SetTimer]]:
        """Remove and return every timer due at `now` or before, earliest first."""
        due: list[tuple[bytes, SetTimer]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, ticket, timer_id = heapq.heappop(heap)
            held = self._timers.get(timer_id)
            if held is not None and held[0] == ticket:
                del self._timers[timer_id]
                due.append((timer_id[0], held[1]))
        return due

    def _compact(self) -> None:
        current = {ticket for ticket, _ in self._timers.values()}
        self._heap = [entry for entry in self._heap if entry[1] in current]
        heapq.heapify(self._heap)


def fire_timer(
    state: RunState | None,
    timer: SetTimer,
    now: datetime,
    schedules: ScheduleLookup | None = None,
) -> list[Effect]:
    """What the due `timer` writes, given its run's state now; nothing if the state no longer
    wants it (the step moved on, the run ended or started, the timer was replaced). A start
    is `schedules.start_effects`'s: `schedules` gives the workflows' cron schedules now."""
    if state is None:
        return []
    if timer.kind is TimerKind.START:
        if start_timer(state) != timer:
            return []
        return start_effects(state, now, schedules)
    step = state.steps.get(timer.step_key)
    if step is None or step_timer(state, timer.step_key, step) != timer:
        return []
    message_id = timer_message_id(state.run_id, timer.step_key, timer.attempt, timer.kind.value)
    if timer.kind is TimerKind.WAKE:
        sleep = step.winner.parked
        assert isinstance(sleep, SleepInfo)  # step_timer gives wake only for a sleep
        if is_too_late(sleep.wake_at, sleep.expires_after_ms, now):
            return [expired_wake_up(state, timer.step_key, timer.attempt, sleep, now)]
        slept_ms = max((now - step.winner.ts).total_seconds() * 1000.0, 0.0)
        return [
            WriteEvent(
                StepCompleted(
                    event_id=message_id,
                    project=state.project,
                    flow=state.flow,
                    run_id=state.run_id,
                    step_key=timer.step_key,
                    attempt=timer.attempt,
                    ts=now,
                    payload=StepCompletedPayload(output=None, duration_ms=slept_ms),
                )
            )
        ]
    if timer.kind is TimerKind.RETRY:
        reason = f"retry of step {timer.step_key!r} (attempt {timer.attempt + 1})"
        return [SendCommand(resume_command(state, message_id, reason, now, state.position))]
    wait = step.winner.parked
    assert isinstance(wait, WaitInfo)  # step_timer gives wait_timeout only for a wait
    return [
        WriteSignalsMessage(
            WaitEnded(
                event_id=message_id,
                project=state.project,
                name=wait.event,
                run_id=state.run_id,
                flow=state.flow,
                step_key=timer.step_key,
                attempt=timer.attempt,
                reason="timeout",
                ts=now,
            )
        )
    ]
