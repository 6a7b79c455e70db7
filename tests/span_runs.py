"""The run the OpenTelemetry tests trace (unit: tests/unit/test_run_spans.py; integration:
tests/integration/test_otel_export.py): a step that fails, is retried and succeeds, then a
second step, then the run's end. Times are seconds after `T0`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from steplog.schemas.base import ErrorInfo, new_event_id
from steplog.schemas.events import (
    Event,
    RunCompleted,
    RunStarted,
    StepCompleted,
    StepCompletedPayload,
    StepFailed,
    StepFailedPayload,
    StepStarted,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
STACK = 'Traceback (most recent call last):\n  File "shop.py", line 3\nTimeoutError: gateway'


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ns(seconds: float) -> int:
    """`at(seconds)` in nanoseconds since the epoch, as spans carry it."""
    return int(T0.timestamp()) * 1_000_000_000 + round(seconds * 1_000_000_000)


def envelope(run_id: str, seconds: float, seq: int, attempt: int = 1) -> dict[str, Any]:
    return {"event_id": new_event_id(), "project": "shop", "flow": "checkout",
            "run_id": run_id, "ts": at(seconds), "seq": seq, "attempt": attempt}


def retried_run(run_id: str) -> list[Event]:
    """run.started at 0; `charge` attempt 1 at 1-2 fails (retry at 3), attempt 2 at 3-4.5
    succeeds; `ship` at 5-6; run.completed at 7."""
    return [
        RunStarted(**envelope(run_id, 0, 0)),
        StepStarted(**envelope(run_id, 1, 1), step_key="charge"),
        StepFailed(**envelope(run_id, 2, 2), step_key="charge", payload=StepFailedPayload(
            error=ErrorInfo(type="TimeoutError", message="gateway", stack=STACK),
            retry_at=at(3), duration_ms=1000)),
        StepStarted(**envelope(run_id, 3, 3, attempt=2), step_key="charge"),
        StepCompleted(**envelope(run_id, 4.5, 4, attempt=2), step_key="charge",
                      payload=StepCompletedPayload(duration_ms=1500)),
        StepStarted(**envelope(run_id, 5, 5), step_key="ship"),
        StepCompleted(**envelope(run_id, 6, 6), step_key="ship"),
        RunCompleted(**envelope(run_id, 7, 7)),
    ]
