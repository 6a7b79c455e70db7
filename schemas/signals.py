"""The signals topic (key = event name): signals, and the bookkeeping of each name.

A signal comes from outside (`client.send_event`) or from a step's `emit`. Beside the signals of
a name, its partition carries what the signals agent must know to act on them, in log order:

- `wait.registered`: a run parked on the name (a `wait_for_event` step),
- `wait.ended`: that wait stopped counting (its timeout is due, or the run was cancelled),
- `trigger.registered`: a workflow starts on the name.

Sharing the partition is what makes "a signal that arrives after the run is parked" precise: the
worker waits for Kafka to acknowledge `wait.registered` before the run counts as parked, so a
signal sent after that lands behind it and is seen after it; one partition also decides, once,
whether a wait's signal or its `wait.ended` came first.

`SignalsMessage` is the union of the four, discriminated on `type`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from .base import (
    SCHEMA_VERSION,
    MatchPath,
    MessageId,
    Name,
    SchemaVersion,
    Timestamp,
    WireModel,
    models_by_type,
)
from .limits import LABEL_MAX_CHARS, Attempt, DeadlineMs, JsonValue

__all__ = [
    "Idempotency",
    "WAIT_CONDITION_NAMES",
    "WaitCondition",
    "MatchPath",
    "SIGNALS_MESSAGE_MODELS",
    "SIGNALS_MESSAGE_TYPES",
    "Signal",
    "SignalsMessage",
    "TriggerRegistered",
    "WaitEnded",
    "WaitRegistered",
    "condition_variables",
    "resolve_match_path",
    "wait_matches",
]

WaitCondition = Annotated[str, Field(min_length=1, max_length=LABEL_MAX_CHARS)]
"""A CEL condition on the signal (steplog/expressions.py), e.g. "event.data.amount > 100"."""

WAIT_CONDITION_NAMES: tuple[str, ...] = ("event",)
"""The names a wait's condition may use: `event`, the signal (`condition_variables`)."""

class Signal(WireModel):
    """A named event that can start runs and resume waiting steps."""

    event_id: MessageId = Field(description="Unique per signal; consumers drop re-deliveries.")
    type: Literal["signal"] = "signal"
    schema_version: SchemaVersion = SCHEMA_VERSION
    project: Name
    name: Name = Field(description="The event name workflows trigger and wait on.")
    data: JsonValue = Field(None, description="The payload handed to triggered or woken runs.")
    app: Name | None = Field(
        None, description="Deliver only to this app's workflows; null delivers to every app."
    )
    ts: Timestamp
    source_run_id: Name | None = Field(None, description="The run whose `emit` sent it, if any.")
    source_step_key: Name | None = None


class WaitRegistered(WireModel):
    """A run parked on the name: the next signal that matches resolves its wait step.

    Written by the worker before `step.waiting`, and acknowledged before the run counts as
    parked. Its event_id is `ids.wait_registration_id(run_id, step_key, attempt)`, so a pass
    replayed after a crash re-registers the same wait instead of a second one.
    """

    event_id: MessageId = Field(description="Unique per registration; consumers drop duplicates.")
    type: Literal["wait.registered"] = "wait.registered"
    schema_version: SchemaVersion = SCHEMA_VERSION
    project: Name
    name: Name = Field(description="The event name waited on; also the message key.")
    app: Name | None = Field(None, description="The waiting run's app.")
    flow: Name = Field(description="The waiting run's workflow name.")
    run_id: Name
    step_key: Name = Field(description="The wait_for_event step that parked the run.")
    attempt: Attempt = Field(1, description="Attempt of that step.")
    match: MatchPath | None = Field(
        None, description="Only signals with the trigger event's value at this path resolve "
        "the wait; null: any signal of the name does."
    )
    match_value: JsonValue = Field(
        None, description="The value at `match` in the run's trigger event, resolved by the "
        "worker; null when `match` is null."
    )
    timeout_at: Timestamp | None = Field(
        None, description="When the wait resolves to null; null waits forever."
    )
    cancels_run: bool = Field(
        False, description="A workflow's `cancel_on` rule, not a step: the signal that "
        "resolves it cancels the run (`run.cancelled`) instead of completing `step_key` "
        "(`$cancel_on.<index>`, no step of the run). An older reader would complete that "
        "step instead: upgrade the processors first."
    )
    condition: WaitCondition | None = Field(
        None, description="A CEL condition (`if_`) the signal must also meet, over `event` "
        "(the signal: name, data, app, event_id); null: none. An older reader ignores it and "
        "resolves the wait on any signal that matches: upgrade the processors first."
    )
    ts: Timestamp

    @model_validator(mode="after")
    def _match_value_needs_a_match(self) -> WaitRegistered:
        if self.match is None and self.match_value is not None:
            raise ValueError(
                f"match_value: {self.match_value!r} given without a match path; "
                "set match, or leave match_value null"
            )
        return self


class WaitEnded(WireModel):
    """A registered wait stops counting: its timeout is due, or its run was cancelled.

    If the wait is still registered when the signals agent reads this, it removes it and (for a
    timeout) resolves the step to null; if a signal resolved it first, this is a no-op. Either
    way the step is resolved exactly once, by whichever came first in the name's partition.
    """

    event_id: MessageId = Field(description="Unique per message; consumers drop duplicates.")
    type: Literal["wait.ended"] = "wait.ended"
    schema_version: SchemaVersion = SCHEMA_VERSION
    project: Name
    name: Name = Field(description="The event name waited on; also the message key.")
    run_id: Name
    flow: Name = Field(description="The waiting run's workflow name.")
    step_key: Name
    attempt: Attempt = 1
    reason: Literal["timeout", "cancelled"]
    ts: Timestamp


class Idempotency(WireModel):
    """One run per key and window: a workflow's `idempotency="data.order_id"`."""

    key: MatchPath = Field(description="Dotted path to the key in the trigger event "
                           "({name, data}), e.g. 'data.order_id'.")
    window_ms: DeadlineMs = Field(86_400_000, description="Fixed windows of this length "
                                  "(epoch time // window_ms); default 24 h.")


class TriggerRegistered(WireModel):
    """A workflow starts a run for each signal of the name (written by workers at start)."""

    event_id: MessageId = Field(description="Unique per message; consumers drop duplicates.")
    type: Literal["trigger.registered"] = "trigger.registered"
    schema_version: SchemaVersion = SCHEMA_VERSION
    project: Name
    name: Name = Field(description="The trigger event name; also the message key.")
    app: Name = Field(description="The app the workflow belongs to.")
    workflow: Name
    idempotency: Idempotency | None = Field(
        None, description="The workflow's idempotency: signals with one key in a window start "
        "one run (the first's data); null: every signal starts a run. An older reader starts "
        "one per signal: upgrade the processors first."
    )
    ts: Timestamp


SignalsMessage = Annotated[
    Signal | WaitRegistered | WaitEnded | TriggerRegistered, Field(discriminator="type")
]
"""Any message on the signals topic; `codec.decode_signals_message` reads one."""

SIGNALS_MESSAGE_MODELS = models_by_type(SignalsMessage)
SIGNALS_MESSAGE_TYPES: tuple[str, ...] = tuple(SIGNALS_MESSAGE_MODELS)


def resolve_match_path(document: JsonValue, path: str) -> tuple[bool, JsonValue]:
    """`(True, value)` at the dotted `path` in `document`, or `(False, None)` if it is absent.

    A segment selects an object's key; a segment of ASCII digits selects an array's element.
    The worker calls it on the run's trigger event (the signal as a JSON object, e.g.
    `signal.model_dump(mode="json")`) to fill `match_value`; the signals agent on each signal.
    """
    current: JsonValue = document
    for segment in path.split("."):
        if isinstance(current, dict):
            if segment not in current:
                return False, None
            current = current[segment]
        elif isinstance(current, list) and segment.isascii() and segment.isdigit():
            index = int(segment)
            if index >= len(current):
                return False, None
            current = current[index]
        else:
            return False, None
    return True, current


def wait_matches(wait: WaitRegistered, signal: Signal) -> bool:
    """Does `signal` resolve `wait`? Same project and name and, when the wait has a match path,
    the signal has a value there equal (as JSON) to `match_value`.

    The signal's `app` is not consulted: it narrows which *triggers* start runs (see
    docs/workflows.md), while a waiting run asked for the name itself. An absent path never
    matches, not even a null `match_value`.
    """
    if wait.project != signal.project or wait.name != signal.name:
        return False
    if wait.match is None:
        return True
    # Only the field the path starts in is dumped: an agent checks many waits per signal.
    top = wait.match.partition(".")[0]
    found, value = resolve_match_path(signal.model_dump(mode="json", include={top}), wait.match)
    return found and _json_equal(value, wait.match_value)


def condition_variables(signal: Signal) -> dict[str, JsonValue]:
    """What a wait's condition sees: `event`, the signal as JSON (name, data, app, event_id)."""
    return {"event": signal.model_dump(mode="json", include={"name", "data", "app", "event_id"})}


def _json_equal(left: Any, right: Any) -> bool:
    # JSON equality, not Python's: true is not 1 (Python says True == 1), while 1 and 1.0 are
    # the same JSON number.
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(
            _json_equal(left[key], right[key]) for key in left
        )
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(
            _json_equal(a, b) for a, b in zip(left, right, strict=True)
        )
    if isinstance(left, (Mapping, list)) or isinstance(right, (Mapping, list)):
        return False
    return bool(left == right)
