"""Runs and steps as trace spans: the pure mapping behind `steplog otel-export`.

A run is a trace, each step attempt a span under the run's root span, an error an event on the
span it ended. No OpenTelemetry import here: the spans are plain records (`SpanRecord`) that the
exporter (steplog/server/otel_export.py) turns into OTLP; this module only folds the events of
one partition of the events topic into them, in log order.

Ids are derived from the run, never drawn at random, so a re-read of the log (a restart, a
rebalance, re-delivery) names the same trace and the same spans again:

    trace id        sha256(["steplog.trace", run_id])[:16]
    root span id    sha256(["steplog.run", run_id])[:8]
    attempt span id sha256(["steplog.step", run_id, step_key, attempt])[:8]

(the hashed text is the JSON array, so no separator inside a name can make two keys collide).

A span ends with the event that ends what it stands for (step.completed, step.failed,
step.skipped; run.completed, run.failed, run.cancelled), and only then is it emitted, once: the
state kept until then is each open run's first event (the root span's start) and each open
attempt's start (step.started, or the sleep, wait or child run that parked it). That state is
bounded: at most `max_open_runs` runs per partition, the oldest forgotten first (a run that
never ends, as an instrumented run without `run.complete()`, must not hold memory forever).

`hold_position` tells the exporter how far it may commit: not past the first event of a run
still open, so that a restart re-reads it and rebuilds its start, but only for runs open less
than `hold` on the log's time; an older one stops holding the commit back (a restart then loses
its start: its root span starts at the first event re-read, an attempt open across the restart
starts at its end minus its `duration_ms`). A restart thus re-reads at most about `hold` of a
partition.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Final

from steplog.schemas.base import ErrorInfo
from steplog.schemas.events import (
    Event,
    RunCancelled,
    RunCompleted,
    RunFailed,
    StepCompleted,
    StepFailed,
    StepInvoked,
    StepSkipped,
    StepSleeping,
    StepStarted,
    StepWaiting,
)
from steplog.schemas.statuses import RunStatus, StepStatus

__all__ = [
    "ATTRIBUTE_PREFIX",
    "PartitionSpans",
    "SpanError",
    "SpanRecord",
    "SpanStatus",
    "run_span_id",
    "step_span_id",
    "trace_id",
]

ATTRIBUTE_PREFIX: Final = "steplog."
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)


class SpanStatus(StrEnum):
    """OpenTelemetry's span status codes that a run or step can end with."""

    OK = "ok"
    ERROR = "error"


@dataclass(frozen=True)
class SpanError:
    """An error as an `exception` span event (OpenTelemetry's exception conventions)."""

    at_ns: int
    type: str
    message: str
    stacktrace: str | None


@dataclass(frozen=True)
class SpanRecord:
    """One finished span, times in nanoseconds since the epoch."""

    trace_id: int
    span_id: int
    parent_span_id: int | None
    name: str
    start_ns: int
    end_ns: int
    status: SpanStatus
    attributes: dict[str, str | int]
    errors: tuple[SpanError, ...] = ()


def _digest(*parts: str | int) -> bytes:
    return hashlib.sha256(json.dumps(parts).encode()).digest()


def _id(digest: bytes, size: int) -> int:
    # An all-zero id is invalid in OpenTelemetry; one in 2**64 runs would hit it.
    return int.from_bytes(digest[:size], "big") or 1


def trace_id(run_id: str) -> int:
    """The trace of a run (128 bits)."""
    return _id(_digest("steplog.trace", run_id), 16)


def run_span_id(run_id: str) -> int:
    """The root span of a run (64 bits)."""
    return _id(_digest("steplog.run", run_id), 8)


def step_span_id(run_id: str, step_key: str, attempt: int) -> int:
    """The span of one attempt of a step (64 bits)."""
    return _id(_digest("steplog.step", run_id, step_key, attempt), 8)


def _ns(at: datetime) -> int:
    # Exact integer arithmetic: a float timestamp would lose the microseconds.
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _error(at: datetime, error: ErrorInfo) -> SpanError:
    return SpanError(_ns(at), error.type, error.message, error.stack)


@dataclass
class _OpenRun:
    first_offset: int
    first_ts: datetime
    project: str
    flow: str
    attempts: dict[tuple[str, int], datetime] = field(default_factory=dict)
    """When each attempt still open began, by (step_key, attempt)."""


_PARKING = (StepStarted, StepSleeping, StepWaiting, StepInvoked)
_STEP_ENDS = (StepCompleted, StepFailed, StepSkipped)
_RUN_ENDS = (RunCompleted, RunFailed, RunCancelled)


class PartitionSpans:
    """The spans of one partition of the events topic: `apply` each event in log order."""

    def __init__(self, *, max_open_runs: int, hold: timedelta) -> None:
        self.max_open_runs = max_open_runs
        self.hold = hold
        self.forgotten = 0
        """Open runs forgotten to stay within `max_open_runs`, since start."""
        self._runs: OrderedDict[str, _OpenRun] = OrderedDict()
        self._log_now: datetime | None = None

    def __len__(self) -> int:
        return len(self._runs)

    def apply(self, event: Event, offset: int) -> list[SpanRecord]:
        """Fold one event (read at `offset`); the spans it ends."""
        if self._log_now is None or event.ts > self._log_now:
            self._log_now = event.ts
        run = self._runs.get(event.run_id)
        if run is None:
            run = self._open(event, offset)
        if isinstance(event, _PARKING):
            # A retried attempt has its own step.started; a parked step resumed by its
            # step.completed keeps the start of what parked it.
            run.attempts.setdefault((event.step_key, event.attempt), event.ts)
            return []
        if isinstance(event, _STEP_ENDS):
            return [self._step_span(run, event)]
        if isinstance(event, _RUN_ENDS):
            del self._runs[event.run_id]
            return [self._run_span(run, event)]
        return []  # run.started, scheduled, interrupted, resumed: the root span covers them

    def hold_position(self, next_offset: int) -> int:
        """The offset to commit once every event before `next_offset` is applied: the first
        event of the oldest run open for less than `hold`, else `next_offset`."""
        if self._log_now is None:
            return next_offset
        recent = self._log_now - self.hold
        held = [run.first_offset for run in self._runs.values() if run.first_ts >= recent]
        return min(held, default=next_offset)

    def _open(self, event: Event, offset: int) -> _OpenRun:
        while len(self._runs) >= self.max_open_runs:
            self._runs.popitem(last=False)
            self.forgotten += 1
        run = _OpenRun(offset, event.ts, event.project, event.flow)
        self._runs[event.run_id] = run
        return run

    def _step_span(
        self, run: _OpenRun, event: StepCompleted | StepFailed | StepSkipped
    ) -> SpanRecord:
        started = run.attempts.pop((event.step_key, event.attempt), None)
        if started is None:
            # Recorded elsewhere (record_step) or started before what this process re-read.
            duration = getattr(event.payload, "duration_ms", None)
            started = event.ts - timedelta(milliseconds=duration or 0)
        attributes = _attributes(run, event, _step_status(event))
        attributes[f"{ATTRIBUTE_PREFIX}step_key"] = event.step_key
        attributes[f"{ATTRIBUTE_PREFIX}attempt"] = event.attempt
        errors: tuple[SpanError, ...] = ()
        if isinstance(event, StepFailed):
            errors = (_error(event.ts, event.payload.error),)
            if event.payload.retry_at is not None:
                attributes[f"{ATTRIBUTE_PREFIX}retry_at"] = event.payload.retry_at.isoformat()
        return SpanRecord(
            trace_id(event.run_id), step_span_id(event.run_id, event.step_key, event.attempt),
            run_span_id(event.run_id), event.step_key, _ns(min(started, event.ts)),
            _ns(event.ts), SpanStatus.ERROR if errors else SpanStatus.OK, attributes, errors,
        )

    def _run_span(
        self, run: _OpenRun, event: RunCompleted | RunFailed | RunCancelled
    ) -> SpanRecord:
        errors = (_error(event.ts, event.payload.error),) if isinstance(event, RunFailed) else ()
        return SpanRecord(
            trace_id(event.run_id), run_span_id(event.run_id), None, run.flow,
            _ns(min(run.first_ts, event.ts)), _ns(event.ts),
            SpanStatus.OK if isinstance(event, RunCompleted) else SpanStatus.ERROR,
            _attributes(run, event, _run_status(event)), errors,
        )


def _attributes(
    run: _OpenRun, event: Event, status: RunStatus | StepStatus
) -> dict[str, str | int]:
    return {
        f"{ATTRIBUTE_PREFIX}project": run.project,
        f"{ATTRIBUTE_PREFIX}flow": run.flow,
        f"{ATTRIBUTE_PREFIX}run_id": event.run_id,
        f"{ATTRIBUTE_PREFIX}status": status.value,
    }


def _step_status(event: StepCompleted | StepFailed | StepSkipped) -> StepStatus:
    """The attempt's status as the steps table names it: a failure that is retried leaves the
    step `retrying`."""
    if isinstance(event, StepFailed):
        return StepStatus.FAILED if event.payload.retry_at is None else StepStatus.RETRYING
    return StepStatus.COMPLETED if isinstance(event, StepCompleted) else StepStatus.SKIPPED


def _run_status(event: RunCompleted | RunFailed | RunCancelled) -> RunStatus:
    """The run's status as the runs table names it (a cancel marked expired is `expired`)."""
    if isinstance(event, RunCancelled):
        return RunStatus.EXPIRED if event.payload.expired else RunStatus.CANCELLED
    return RunStatus.COMPLETED if isinstance(event, RunCompleted) else RunStatus.FAILED
