"""Flow control: how a workflow's starts are limited, and the flow topic's messages.

A workflow may declare (`WorkflowDefinition.flow_control`):

- `concurrency`: at most `limit` runs running at once; the rest wait, in priority order;
- `throttle`: at most `limit` starts per `period_ms`; the rest wait;
- `rate_limit`: at most `limit` starts per `period_ms`; the rest are skipped (with a reason);
- `debounce`: a start waits `period_ms` of quiet; a later one replaces it (its data wins);
- `priority`: a CEL expression on the start giving an integer (e.g. "event.data.plan ==
  'enterprise' ? 120 : 0"), clamped to [-PRIORITY_MAX, PRIORITY_MAX]; higher starts first
  among those waiting. Evaluated by the processors (processors/flow_gate.py: an error there
  counts as 0, the reason in the start's `flow_starts` row), compiled by the SDK where the
  workflow is declared (schemas import no expression library).

Each limit counts per value of its `key` (a dotted path into the start: `data.<field>` or
`event.data.<field>` is the run's input, `event.name` / `event.event_id` its trigger), or over
the whole workflow without one; `priority` sees the same document (`data` and `event`), so a
dotted path like `data.tier` is an expression too. One workflow's options share one key: a key's starts and run ends all go to the flow
topic's partition of `flow_topic_key(...)`, where one consumer decides them in log order
(processors/fold/flow_control.py), so two keys would need two partitions for one start.

Flow topic messages (key: `flow_topic_key(project, app, workflow, key)`):

- `flow.start_requested`: a start of a controlled workflow (the `start_run` held back, with the
  options that applied when it was requested);
- `flow.run_ended`: one of its runs ended (frees a concurrency slot);
- `flow.tick`: a key's next due time was reached (a throttle window or a debounce period).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field, model_validator

from .base import SCHEMA_VERSION, SchemaVersion, Timestamp, WireModel, models_by_type
from .commands import StartRun
from .limits import (
    LABEL_MAX_CHARS,
    DeadlineMs,
    JsonValue,
    KeySegment,
    MatchPath,
    MessageId,
    Name,
    Reason,
)
from .signals import resolve_match_path

__all__ = [
    "FLOW_MESSAGE_MODELS",
    "Concurrency",
    "Debounce",
    "FlowControl",
    "FlowMessage",
    "FlowRunEnded",
    "FlowStartRequested",
    "FlowTick",
    "RateLimit",
    "Throttle",
    "flow_key_value",
    "flow_topic_key",
    "start_document",
]

LIMIT_MAX: Final = 1_000_000
KEY_VALUE_MAX_CHARS: Final = 200
"""A key value longer than this is replaced by its hash (it is part of a Kafka key and a row)."""

Limit = Annotated[int, Field(ge=1, le=LIMIT_MAX)]

PRIORITY_MAX: Final = LIMIT_MAX
"""A priority's value is clamped to [-PRIORITY_MAX, PRIORITY_MAX]."""
PRIORITY_NAMES: Final = ("data", "event")
"""The variables a priority expression may use: the two roots of `start_document`."""
Priority = Annotated[int, Field(ge=-PRIORITY_MAX, le=PRIORITY_MAX)]
PriorityExpression = Annotated[
    str,
    Field(min_length=1, max_length=LABEL_MAX_CHARS,
          description="CEL on the start (names 'data' and 'event'), e.g. \"event.data.plan == "
                      "'enterprise' ? 120 : 0\"; its integer value, clamped, orders waiting "
                      "starts (higher first)."),
]


def _rooted(path: str) -> str:
    root = path.partition(".")[0]
    if root not in ("data", "event"):
        raise ValueError(
            f"{path!r} starts at {root!r}; expected a path into the start's 'data' (its input, "
            "e.g. 'data.customer_id') or 'event' (its trigger: 'event.name')"
        )
    return path


StartPath = Annotated[MatchPath, AfterValidator(_rooted)]
"""A dotted path into `start_document`: 'data....' or 'event....'."""


class Concurrency(WireModel):
    """At most `limit` runs of the workflow running at once (per `key` value, if given)."""

    limit: Limit
    key: StartPath | None = Field(None, description="e.g. 'data.customer_id'; null: the workflow.")


class Throttle(WireModel):
    """At most `limit` starts per `period_ms` (per `key` value); the others wait their turn."""

    limit: Limit
    period_ms: DeadlineMs
    key: StartPath | None = None


class RateLimit(WireModel):
    """At most `limit` starts per `period_ms` (per `key` value); the others are skipped."""

    limit: Limit
    period_ms: DeadlineMs
    key: StartPath | None = None


class Debounce(WireModel):
    """Start once `period_ms` passed without another start (per `key` value), with the last
    start's data."""

    period_ms: DeadlineMs
    key: StartPath | None = None


class FlowControl(WireModel):
    """A workflow's flow control options (see the module docstring)."""

    concurrency: Concurrency | None = None
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    priority: PriorityExpression | None = None

    @model_validator(mode="after")
    def _one_key(self) -> FlowControl:
        keyed = {name: option.key for name, option in self._options() if option.key is not None}
        if len(set(keyed.values())) > 1:
            listed = ", ".join(f"{name}.key={path!r}" for name, path in keyed.items())
            raise ValueError(
                f"{listed}: the options of one workflow must count by the same key (its starts "
                "are decided where that key's are); use one key, or none"
            )
        return self

    def _options(self) -> list[tuple[str, Concurrency | Throttle | RateLimit | Debounce]]:
        found = (("concurrency", self.concurrency), ("throttle", self.throttle),
                 ("rate_limit", self.rate_limit), ("debounce", self.debounce))
        return [(name, option) for name, option in found if option is not None]

    @property
    def key(self) -> str | None:
        """The path every option counts by (None: the whole workflow)."""
        return next((o.key for _, o in self._options() if o.key is not None), None)

    @property
    def limits_starts(self) -> bool:
        """Does anything hold starts back? (`priority` alone orders nothing.)"""
        return bool(self._options())


def start_document(
    input: JsonValue, trigger_name: str, trigger_event_id: str
) -> dict[str, JsonValue]:
    """What key paths and the priority expression read: `{"data": input, "event": {"name",
    "event_id", "data": input}}` (`event.data` as in `wait_for_event(..., if_=)`, `data` as
    before it)."""
    return {"data": input,
            "event": {"name": trigger_name, "event_id": trigger_event_id, "data": input}}


def flow_key_value(control: FlowControl, document: JsonValue) -> str:
    """The key value a start counts under: its key path's value as JSON ('null' if absent;
    '' without a key path); a long one as its hash."""
    path = control.key
    if path is None:
        return ""
    found, value = resolve_match_path(document, path)
    text = json.dumps(value if found else None, sort_keys=True, separators=(",", ":"))
    if len(text) > KEY_VALUE_MAX_CHARS:
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text


def flow_topic_key(project: str, app: str, workflow: str, key: str) -> str:
    """The flow topic's message key (and the key's state key): a key's partition."""
    return f"{project}/{app}/{workflow}/{key}"


class _FlowEnvelope(WireModel):
    event_id: MessageId
    type: str
    schema_version: SchemaVersion = SCHEMA_VERSION
    project: KeySegment
    app: KeySegment
    workflow: Name
    key: Annotated[str, Field(max_length=KEY_VALUE_MAX_CHARS + 8)] = Field(
        description="The key value (flow_key_value); '' when the workflow counts as a whole."
    )
    ts: Timestamp

    @property
    def topic_key(self) -> str:
        return flow_topic_key(self.project, self.app, self.workflow, self.key)


class FlowStartRequested(_FlowEnvelope):
    """A start held back by flow control until the key's limits let it go."""

    type: Literal["flow.start_requested"] = "flow.start_requested"
    run_id: Name
    priority: Priority = 0
    priority_error: Reason | None = Field(
        None, description="Why the priority expression had no integer value for this start "
        "(its priority is then 0); null: it had one, or there is none."
    )
    control: FlowControl
    command: StartRun = Field(description="Sent to the workers, as it is, once admitted.")


class FlowRunEnded(_FlowEnvelope):
    """A run of the key ended: its concurrency slot is free."""

    type: Literal["flow.run_ended"] = "flow.run_ended"
    run_id: Name
    reason: Reason | None = None


class FlowTick(_FlowEnvelope):
    """The key's next due time (`due`) was reached."""

    type: Literal["flow.tick"] = "flow.tick"
    due: Timestamp


FlowMessage = Annotated[
    FlowStartRequested | FlowRunEnded | FlowTick, Field(discriminator="type")
]
"""Any message on the flow topic; `codec.decode_flow_message` reads one."""

FLOW_MESSAGE_MODELS = models_by_type(FlowMessage)
