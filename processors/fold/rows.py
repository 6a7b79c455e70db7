"""Rows of the `runs` and `steps` tables: the fold's projection of a run, one column per field.

A row is a plain frozen dataclass, not a pydantic model: the fold builds one or two of them for
every event it applies, and validation would only re-check what the fold just computed. Field
names are the ClickHouse column names and the field order is the column order, so a writer
inserts `row.values()` under `columns(type(row))`.

Column conventions:

- text is never NULL: an absent string is `''` (ClickHouse `String`, not `Nullable(String)`);
- JSON columns (`input`, `output`, `metadata`) hold compact JSON with sorted keys, or `''` when
  there is no value (a JSON `null` output and no output at all both read as `''`), so that the
  same value always has the same text, whichever process or replay wrote it;
- timestamps are aware datetimes in UTC (`DateTime64(6, 'UTC')`), durations float milliseconds;
  both are nullable, because "not known (yet)" is a real state of a run;
- `version` is what ReplacingMergeTree keeps the highest of, per key: see each row's docstring.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from json.encoder import encode_basestring
from operator import attrgetter
from typing import Any, Final

__all__ = ["RUN_COLUMNS", "STEP_COLUMNS", "RunRow", "StepRow", "columns", "json_text"]


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run as the `runs` table shows it (key: project, flow, run_id).

    `version` counts the distinct events folded into the run so far and `updated_at` is the
    latest event time among them (never a wall clock), so the row for a given set of events is
    the same in whichever order they arrived, live or in replay.
    """

    project: str
    flow: str
    run_id: str
    app: str
    created_at: datetime
    """When the run's first event happened (RunState.created_at): never changes, so it can
    sort the run list (`run_list`'s key)."""
    status: str
    """A stored RunStatus; `overdue` and `stuck` are left to the views."""
    scheduled_for: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    input: str
    output: str
    error_type: str
    error_message: str
    error_stack: str
    parent_run_id: str
    parent_step_key: str
    trigger_event: str
    """The name of the signal that started the run, e.g. 'order.created'."""
    trigger_event_id: str
    """That signal's event_id, to find it in the log."""
    retrigger_of: str
    stuck_after: datetime | None
    """Earliest deadline among the run's running steps; the run is `stuck` once now() passes
    it. Null when no running step has a deadline, and once the run is terminal."""
    step_count: int
    """Steps that reported at least one event (missing steps are not counted)."""
    failed_step_count: int
    version: int
    updated_at: datetime

    def values(self) -> tuple[Any, ...]:
        """The field values in column order, for a batch insert under RUN_COLUMNS."""
        return _run_values(self)


@dataclass(frozen=True, slots=True)
class StepRow:
    """One step of a run as the `steps` table shows it (key: project, flow, run_id, step_key).

    Unlike the run row, `version` counts the distinct events of *this step* (and `updated_at` is
    the latest among them). A step row is re-emitted only when one of its own events is folded,
    so a run-wide counter would leave each step's last row with a version that depends on how
    the step's events interleaved with other steps'; the step's own count does not.
    A `missing` row (a graph step that never reported) has version 0 and no updated_at: any real
    report of the step replaces it.
    """

    project: str
    flow: str
    run_id: str
    step_key: str
    kind: str
    """A StepKind: which SDK call produced the step."""
    status: str
    """A stored StepStatus, or `missing`; `stuck` is left to the views (see deadline_at)."""
    attempt: int
    """The attempt the status is about (0 for a missing step)."""
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    error_type: str
    error_message: str
    error_stack: str
    input: str
    output: str
    metadata: str
    deadline_at: datetime | None
    """While the step is running and its flow gives it a deadline: when it becomes `stuck`."""
    version: int
    updated_at: datetime | None

    def values(self) -> tuple[Any, ...]:
        """The field values in column order, for a batch insert under STEP_COLUMNS."""
        return _step_values(self)


def _fast_init(row_type: type[Any]) -> Callable[..., None]:
    """An __init__ for a frozen slots row that fills its slots through their descriptors.

    Why: a frozen dataclass's own __init__ assigns every field through object.__setattr__,
    about 190 ns a field, and the fold builds two rows of ~20 fields per event: that alone was
    a fifth of its time. Straight-line calls to the slot descriptors cost a third of that and
    keep the row frozen (assignment after construction still raises FrozenInstanceError).
    Same signature as the generated one (all fields, no defaults), so mypy checks the calls.
    """
    names = [field.name for field in fields(row_type)]
    namespace: dict[str, Any] = {f"_set_{name}": getattr(row_type, name).__set__ for name in names}
    body = "".join(f"    _set_{name}(self, {name})\n" for name in names)
    exec(f"def __init__(self, {', '.join(names)}):\n{body}", namespace)
    init: Callable[..., None] = namespace["__init__"]
    init.__qualname__ = f"{row_type.__name__}.__init__"
    return init


RunRow.__init__ = _fast_init(RunRow)  # type: ignore[method-assign]
StepRow.__init__ = _fast_init(StepRow)  # type: ignore[method-assign]

RUN_COLUMNS: Final[tuple[str, ...]] = tuple(field.name for field in fields(RunRow))
STEP_COLUMNS: Final[tuple[str, ...]] = tuple(field.name for field in fields(StepRow))

# attrgetter with several names returns a tuple, in C: the cheapest way to turn a slots
# dataclass into an insertable row (dataclasses.astuple deep-copies every value).
_run_values = attrgetter(*RUN_COLUMNS)
_step_values = attrgetter(*STEP_COLUMNS)


def columns(row_type: type[RunRow] | type[StepRow]) -> tuple[str, ...]:
    """The column names of a row type, in the order `row.values()` yields them."""
    if row_type is RunRow:
        return RUN_COLUMNS
    if row_type is StepRow:
        return STEP_COLUMNS
    raise TypeError(f"row_type: expected RunRow or StepRow, got {row_type!r}")


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)
# The C encoder behind json.dumps, made once: json.dumps builds a new encoder on every call,
# which costs more than encoding a small payload. Values come from decoded JSON, so the
# circular-reference check (markers=None) has nothing to find.
_c_make_encoder: Callable[..., Callable[[object, int], list[str]]] | None = getattr(
    json.encoder, "c_make_encoder", None
)
_C_ENCODE: Final = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        None, _ENCODER.default, encode_basestring, None, ":", ",", True, False, True
    )
)


def json_text(value: object) -> str:
    """A JSON column's text: '' for None, else compact JSON with sorted keys.

    Sorted keys make the text a function of the value alone, so the same output written by
    two producers (or by live processing and a replay) compares equal in SQL.
    """
    if value is None:
        return ""
    if _C_ENCODE is None:
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))
