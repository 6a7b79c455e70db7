"""record_step's event: a step that ran where it could not be wrapped (another service, a
callback), as the mapping the event models validate (producers.client sends it).

Mistakes in the call raise InvalidEventError naming the argument: a status that cannot be
recorded, or an argument the event has no place for (it would be silently dropped).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from steplog.errors import InvalidEventError
from steplog.producers.metadata import clean_metadata
from steplog.producers.recorded_errors import cut_error_message
from steplog.redaction import SecretRules
from steplog.schemas.base import new_event_id
from steplog.schemas.limits import ERROR_TYPE_MAX_CHARS
from steplog.schemas.statuses import StepStatus, parse_step_status

__all__ = ["recorded_step"]

# What record_step can send, by status, and the words a caller may use for each.
_RECORDABLE: Final = {
    StepStatus.RUNNING: "step.started",
    StepStatus.COMPLETED: "step.completed",
    StepStatus.FAILED: "step.failed",
    StepStatus.SKIPPED: "step.skipped",
}
_RECORDABLE_WORDS: Final = "running, success/succeeded/completed, error/failed, skipped"

# The arguments of record_step that belong to one kind of event only.
_ARGUMENT_EVENTS: Final = {
    "output": ("step.completed",),
    "duration_ms": ("step.completed", "step.failed"),
    "error": ("step.failed",),
    "reason": ("step.skipped",),
}


def recorded_step(
    project: str,
    secrets: SecretRules,
    *,
    flow_key: str,
    run_id: str,
    step_key: str,
    status: str,
    metadata: Mapping[str, object] | None,
    error: str | BaseException | None,
    output: object,
    duration_ms: float | None,
    reason: str | None,
    attempt: int,
) -> dict[str, Any]:
    """The event mapping of Client.record_step's arguments (its docstring), redacted."""
    event_type = _RECORDABLE.get(parse_step_status(status))
    if event_type is None:
        # pending/scheduled, retrying, interrupted: states the platform derives for
        # durable workflows, not facts an instrumented service observes about a step.
        raise InvalidEventError(
            "status",
            f"{status!r} cannot be recorded for an instrumented step; "
            f"expected one of {_RECORDABLE_WORDS}",
        )
    _refuse_unused(event_type, error=error, output=output, duration_ms=duration_ms, reason=reason)
    clean = clean_metadata(metadata, secrets)
    output = secrets.redact_json(output)
    payload: dict[str, Any]
    match event_type:
        case "step.started":
            payload = {"kind": "instrumented", "metadata": clean}
        case "step.completed":
            payload = {"output": output, "duration_ms": duration_ms, "metadata": clean}
        case "step.failed":
            error_info = _error_info(error)
            payload = {"error": error_info, "duration_ms": duration_ms, "metadata": clean}
        case _:
            payload = {"reason": reason, "metadata": clean}
    return {
        "event_id": new_event_id(),
        "type": event_type,
        "project": project,
        "flow": flow_key,
        "run_id": run_id,
        "attempt": attempt,
        "ts": datetime.now(UTC),
        "seq": 0,
        "step_key": step_key,
        "payload": payload,
    }


def _error_info(error: str | BaseException | None) -> dict[str, Any]:
    # Messages are cut as run.step cuts them: a long message is a diagnostic's problem, not a
    # reason to lose the record of the failure.
    if error is None:
        return {"type": "Error", "message": ""}
    if isinstance(error, BaseException):
        return {
            "type": type(error).__qualname__[:ERROR_TYPE_MAX_CHARS],
            "message": cut_error_message(str(error)),
        }
    if isinstance(error, str):
        return {"type": "Error", "message": cut_error_message(error)}
    raise InvalidEventError(
        "error", f"expected a message or an exception, got {type(error).__name__}"
    )


def _refuse_unused(event_type: str, **given: object) -> None:
    # An argument the event has no place for would be silently dropped; say so instead.
    for name, value in given.items():
        if value is not None and event_type not in _ARGUMENT_EVENTS[name]:
            raise InvalidEventError(
                name,
                f"has no place on {event_type}; it is recorded on "
                f"{' and '.join(_ARGUMENT_EVENTS[name])} only",
            )
