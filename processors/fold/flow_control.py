"""Flow control's fold: per key of a controlled workflow, which held-back start goes now.

Pure: `apply_flow_message(state, message, now_ms)` updates one key's `FlowKeyState` in place
and returns the effects: `SendCommand(start_run, admitted=True)` for each start let go, and
`FlowStartChanged` rows (what `flow_starts` shows: a start `scheduled` with the reason it
waits, `started` once it went, or `skipped` with the reason; a start let go at once, never
held back, has no row: its run is in `runs` as any other). The host (processors/flow_control_host.py)
feeds it the flow topic, where every message of a key shares one partition
(`schemas.flow_control.flow_topic_key`), so the log's order decides and replay decides alike.

`now_ms` is the record's broker time (the topic is LogAppendTime), never a clock read here;
a tick counts as at least its `due`, so a broker clock a little behind the host's still lets
the due start go (instead of the host ticking again and again until the broker catches up).

    message              does
    flow.start_requested a duplicate (run known): nothing. Rate limit full: skipped.
                         Debounced: becomes the key's pending start (due now + period; the
                         pending one it replaces is skipped). Else it waits, then `admit`.
    flow.run_ended       frees the run's concurrency slot, then `admit`.
    flow.tick            a due debounced start joins the waiting ones, then `admit`.

`admit` lets the best waiting start go (highest priority, then the earliest) while the
concurrency limit and the throttle window both have room. A start let go keeps the command id
it was requested with: after a crash the host handles the batch again from the older state and
sends the same command, which the workers drop as a duplicate.
"""

from __future__ import annotations

import bisect
import json
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Final, Literal

from steplog.schemas.commands import StartRun
from steplog.schemas.flow_control import (
    FlowControl,
    FlowMessage,
    FlowRunEnded,
    FlowStartRequested,
    FlowTick,
)

from .effects import SendCommand

__all__ = [
    "FlowEffect",
    "FlowKeyState",
    "FlowStartChanged",
    "FlowStartStatus",
    "RECENT_RUNS",
    "apply_flow_message",
]

RECENT_RUNS: Final = 256
"""Run ids remembered per key once done with, to drop a start requested again: a request is
sent again when the batch that sent it is handled again after a crash (its states were not
stored), so the window needs to cover what one key admits between a batch and its commit; a
longer one costs every message of the key a larger state to decode."""

_SEP: Final = "\x1f"
"""Between the recent run ids: a control character, which no run id holds (schemas.limits.Name)."""
_STATE_FORMAT: Final = "flow-key-state 2"
"""The first line of a stored state (`FlowKeyState.to_bytes`). Format 1 (one JSON document)
was never released: a state in it is refused, naming both."""

FlowStartStatus = Literal["scheduled", "started", "skipped"]
_RANK: Final = {"scheduled": 0, "started": 1, "skipped": 2}


@dataclass(frozen=True, slots=True)
class FlowStartChanged:
    """A row of `flow_starts`: where one held-back start is (its version: when, then rank, so
    the latest word on a start wins)."""

    project: str
    app: str
    workflow: str
    key: str
    run_id: str
    status: FlowStartStatus
    reason: str
    priority: int
    requested_ms: int
    at_ms: int

    @property
    def version(self) -> int:
        return self.at_ms * 4 + _RANK[self.status]


FlowEffect = SendCommand | FlowStartChanged


@dataclass
class FlowKeyState:
    """One key's held-back starts, running runs and windows."""

    waiting: list[tuple[int, int, str]] = field(default_factory=list)
    """(-priority, arrival seq, the start's `start_run` as JSON), sorted: the first goes
    first. Only the command (without its defaults): the request's other fields are the key's
    (`names`, `control`). Kept as JSON, decoded when it goes: a key's state is decoded and
    encoded at every batch that touches it, and its waiting starts are most of it."""
    requested_ms: dict[str, int] = field(default_factory=dict)
    """When each start still waiting (or pending) was requested."""
    running: set[str] = field(default_factory=set)
    """Runs let go and not ended (only counted under a concurrency limit)."""
    started_ms: deque[int] = field(default_factory=deque)
    """When starts were let go, within the throttle's period."""
    accepted_ms: deque[int] = field(default_factory=deque)
    """When starts were accepted, within the rate limit's period."""
    pending: tuple[int, FlowStartRequested] | None = None
    """The debounced start and when it is due."""
    recent: str = _SEP
    """The run ids done with (started or skipped), oldest first, each followed by `_SEP`
    (after a leading one): one string, stored as it is, searched and trimmed in C, instead
    of a collection of up to RECENT_RUNS ids built again at every batch."""
    recent_count: int = 0
    seq: int = 0
    clock_ms: int = 0
    """The latest time seen: windows never go backwards."""
    control: FlowControl | None = None
    """The options of the latest start requested: what ticks and ends are judged by."""
    names: tuple[str, str, str, str] = ("", "", "", "")
    """(project, app, workflow, key value): what a tick of the key names."""

    def knows(self, run_id: str) -> bool:
        return (run_id in self.requested_ms or run_id in self.running
                or f"{_SEP}{run_id}{_SEP}" in self.recent)

    def remember(self, run_id: str) -> None:
        self.recent += run_id + _SEP
        self.recent_count += 1
        if self.recent_count > RECENT_RUNS:
            self.recent = self.recent[self.recent.index(_SEP, 1):]
            self.recent_count -= 1

    def next_due_ms(self) -> int | None:
        """When this key next needs a tick: its debounced start's due time, or the end of the
        throttle window that holds its waiting starts back. None: nothing due."""
        due: list[int] = []
        control = self.control
        if self.pending is not None:
            due.append(self.pending[0])
        throttle = control.throttle if control is not None else None
        if (self.waiting and throttle is not None and len(self.started_ms) >= throttle.limit
                and _has_slot(self, control)):
            due.append(self.started_ms[0] + throttle.period_ms)
        return min(due) if due else None

    def to_bytes(self) -> bytes:
        """The changelog's form (`_STATE_FORMAT`): lines, so that the waiting starts' JSON is
        copied as it is rather than escaped into (and parsed out of) one JSON document."""
        pending = self.pending
        header = json.dumps([
            self.requested_ms, sorted(self.running), list(self.started_ms),
            list(self.accepted_ms), None if pending is None else pending[0],
            self.recent_count, self.seq, self.clock_ms, self.names,
        ], separators=(",", ":"))
        lines = [
            _STATE_FORMAT, header, "" if self.control is None else _control_json(self.control),
            "" if pending is None else pending[1].model_dump_json(exclude_defaults=True),
            self.recent,
            *(f"{priority} {seq} {command}" for priority, seq, command in self.waiting),
        ]
        return "\n".join(lines).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> FlowKeyState:
        lines = data.decode().split("\n")
        if lines[0] != _STATE_FORMAT:
            raise ValueError(f"flow-control state: format {lines[0][:40]!r}; this build reads "
                             f"{_STATE_FORMAT!r}")
        _, header, control, pending, recent, *waiting = lines
        (requested_ms, running, started_ms, accepted_ms, pending_due, recent_count, seq,
         clock_ms, (project, app, workflow, key)) = json.loads(header)
        entries = [line.split(" ", 2) for line in waiting]
        return cls(
            waiting=[(int(rank), int(arrival), command) for rank, arrival, command in entries],
            requested_ms=requested_ms, running=set(running), started_ms=deque(started_ms),
            accepted_ms=deque(accepted_ms),
            pending=(None if pending_due is None
                     else (pending_due, FlowStartRequested.model_validate_json(pending))),
            recent=recent, recent_count=recent_count, seq=seq, clock_ms=clock_ms,
            control=_control(control) if control else None,
            names=(project, app, workflow, key),
        )


def apply_flow_message(
    state: FlowKeyState, message: FlowMessage, now_ms: int
) -> list[FlowEffect]:
    """Apply one flow-topic message of the key (see the module docstring)."""
    if isinstance(message, FlowTick):
        now_ms = max(now_ms, _ms(message.due))
    now_ms = state.clock_ms = max(state.clock_ms, now_ms)
    effects: list[FlowEffect] = []
    joined: FlowStartRequested | None = None
    """A start that joined the waiting ones with this message."""
    if isinstance(message, FlowStartRequested):
        joined = _request(state, message, now_ms, effects)
    elif isinstance(message, FlowRunEnded):
        if message.run_id not in state.running:
            return effects
        state.running.discard(message.run_id)
    elif state.pending is not None and state.pending[0] <= now_ms:
        joined = state.pending[1]
        state.pending = None
        _wait(state, joined)
    control = state.control
    if control is not None:
        # A start let go by the message that requested it never showed as waiting: no row.
        unseen = joined.run_id if isinstance(message, FlowStartRequested) and joined else None
        _admit(state, control, now_ms, effects, unseen)
    if joined is not None and joined.run_id in state.requested_ms and control is not None:
        # Still held back: say why, beside the start.
        effects.append(_row(joined, "scheduled", state.requested_ms[joined.run_id], now_ms,
                            _blocked_by(state, control)))
    return effects


def _request(
    state: FlowKeyState, request: FlowStartRequested, now_ms: int, effects: list[FlowEffect]
) -> FlowStartRequested | None:
    """Take a start in; returns it if it joined the waiting ones."""
    if state.knows(request.run_id):
        return None
    control = state.control = request.control
    state.names = (request.project, request.app, request.workflow, request.key)
    rate = control.rate_limit
    if rate is not None:
        _slide(state.accepted_ms, now_ms - rate.period_ms)
        if len(state.accepted_ms) >= rate.limit:
            state.remember(request.run_id)
            effects.append(_row(request, "skipped", now_ms, now_ms,
                                f"rate limit: {rate.limit} starts per {rate.period_ms} ms"))
            return None
        state.accepted_ms.append(now_ms)
    debounce = control.debounce
    if debounce is not None:
        if state.pending is not None:
            replaced = state.pending[1]
            replaced_ms = state.requested_ms.pop(replaced.run_id, now_ms)
            state.remember(replaced.run_id)
            effects.append(_row(replaced, "skipped", replaced_ms, now_ms,
                                f"debounced: replaced by run {request.run_id}"))
        state.requested_ms[request.run_id] = now_ms
        state.pending = (now_ms + debounce.period_ms, request)
        effects.append(_row(request, "scheduled", now_ms, now_ms,
                            f"debounce: waiting for {debounce.period_ms} ms without a start"))
        return None
    state.requested_ms[request.run_id] = now_ms
    _wait(state, request)
    return request


def _wait(state: FlowKeyState, request: FlowStartRequested) -> None:
    state.seq += 1
    command = request.command.model_dump_json(exclude_defaults=True)
    bisect.insort(state.waiting, (-request.priority, state.seq, command))


def _admit(
    state: FlowKeyState, control: FlowControl, now_ms: int, effects: list[FlowEffect],
    unseen: str | None,
) -> None:
    throttle = control.throttle
    if throttle is not None:
        _slide(state.started_ms, now_ms - throttle.period_ms)
    while state.waiting and not _blocked_by(state, control):
        negative_priority, _, command_json = state.waiting.pop(0)
        command = StartRun.model_validate_json(command_json)
        run_id = command.run_id
        requested_ms = state.requested_ms.pop(run_id, now_ms)
        state.remember(run_id)
        if control.concurrency is not None:
            state.running.add(run_id)
        if throttle is not None:
            state.started_ms.append(now_ms)
        effects.append(SendCommand(command, admitted=True))
        if run_id != unseen:
            project, app, workflow, key = state.names
            effects.append(FlowStartChanged(
                project=project, app=app, workflow=workflow, key=key, run_id=run_id,
                status="started", reason="", priority=-negative_priority,
                requested_ms=requested_ms, at_ms=now_ms,
            ))


def _blocked_by(state: FlowKeyState, control: FlowControl) -> str:
    """Why the next waiting start cannot go now ('' when it can)."""
    if not _has_slot(state, control):
        assert control.concurrency is not None
        return f"concurrency: {control.concurrency.limit} running"
    throttle = control.throttle
    if throttle is not None and len(state.started_ms) >= throttle.limit:
        return f"throttle: {throttle.limit} starts per {throttle.period_ms} ms"
    return ""


def _has_slot(state: FlowKeyState, control: FlowControl | None) -> bool:
    concurrency = control.concurrency if control is not None else None
    return concurrency is None or len(state.running) < concurrency.limit


def _slide(window: deque[int], after_ms: int) -> None:
    while window and window[0] <= after_ms:
        window.popleft()


def _row(
    request: FlowStartRequested, status: FlowStartStatus, requested_ms: int, at_ms: int,
    reason: str,
) -> FlowStartChanged:
    if status == "scheduled" and request.priority_error is not None:
        # Beside why it waits: why it waits with priority 0 (processors/flow_gate.py).
        reason = f"{reason}; {request.priority_error}"
    return FlowStartChanged(
        project=request.project, app=request.app, workflow=request.workflow, key=request.key,
        run_id=request.run_id, status=status, reason=reason, priority=request.priority,
        requested_ms=requested_ms, at_ms=at_ms,
    )


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


@lru_cache(maxsize=256)
def _control(text: str) -> FlowControl:
    # Cached: every key of a workflow stores the same options, decoded at every batch.
    return FlowControl.model_validate_json(text)


@lru_cache(maxsize=256)
def _control_json(control: FlowControl) -> str:
    return control.model_dump_json(exclude_defaults=True)
