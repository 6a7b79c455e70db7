"""Every field's limits, declared once: each range and shape is that of the column that stores it.

A value the store cannot hold must be refused where it enters, never accepted and then failed
on for ever: one `attempt` of 2^32 in an insert makes every write of its batch fail
("Unable to create native array for column `attempt`"). So each limit below is named after
the ClickHouse column (projections/migrations.py) or the wire rule it comes from, and the three
doors enforce these same types and numbers:

- the SDK (`producers/`): names by `producers.event_bytes.encode_name` (the hot path, without
  pydantic, with the numbers and `CONTROL_CHARACTER` from here), everything else through the
  models; InvalidEventError or MetadataError to the caller, where the step is called;
- the ingest API (`steplog/server/api.py`, `codec.validate_event`): 400 naming the field and the limit;
- the processors (`codec.decode_event`): a dead letter naming the field and the limit.

| what | limit | why |
| --- | --- | --- |
| attempt (every attempt field, RetryPolicy.attempts) | 1 to 2^32 - 1 | `attempt UInt32` |
| seq | 0 to 2^64 - 1 | `seq UInt64` |
| schema_version | 1 (a Literal) | `schema_version UInt16` |
| durations in ms (deadlines, retry delays) | 1 (0 for delays) to DURATION_MS_MAX | added to a timestamp, the result must stay in range; `step_deadline_ms UInt64` |
| duration_ms, other floats | finite (and >= 0 for durations) | `Float64` columns; JSON has no NaN or Infinity |
| numbers inside JSON values (input, output, data, match_value) and metadata | finite | stored as JSON text, which has no NaN or Infinity (1e400 would become null) |
| timestamps | 1900-01-01T00:00:00Z to 2299-12-31T23:59:59.999999Z | `DateTime64(6, 'UTC')` |
| names (project, flow, run id, step key, event name, app, ...) | 1 to 200 chars, no control characters | table keys; NUL and friends break every tool that prints or greps them |
| ids (event_id, command_id) | 1 to 128 chars, no control characters | the de-duplication key |
| error type / message / stack | 1 KiB / 32 KiB / 128 KiB chars | see below |
| reasons (skip, cancel, interrupt, resume) | 4 KiB chars | a sentence, not a document |
| display names (flow, flow step) | 1 KiB chars | shown on the dashboard |
| metadata | 64 keys of 1 to 100 chars; strings up to 1 KiB chars | flat diagnostics (ids, counts, status codes) |
| Kafka positions (history, dead letters) | partition 0 to 2^31 - 1, offset 0 to 2^63 - 1 | Kafka's own types |

The text sizes are in characters (what pydantic counts); one character is at most 4 bytes of
UTF-8, so an error at its limits (1 + 32 + 128 KiB characters, at most 644 KiB of UTF-8) still
fits the default event limit of 1 MiB (STEPLOG_MAX_EVENT_BYTES) with room for the envelope. The
SDK cuts what it records itself (an exception's message and stack, see producers/run.py) well
below these; the limits are for every producer, in any language.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import AfterValidator, AwareDatetime, Field, GetCoreSchemaHandler, GetPydanticSchema
from pydantic import JsonValue as AnyJsonValue
from pydantic_core import core_schema

__all__ = [
    "ATTEMPT_MAX",
    "Attempt",
    "CONTROL_CHARACTER",
    "DURATION_MS_MAX",
    "DelayMs",
    "DeadlineMs",
    "DurationMs",
    "ERROR_MESSAGE_MAX_CHARS",
    "ERROR_STACK_MAX_CHARS",
    "ERROR_TYPE_MAX_CHARS",
    "ErrorMessage",
    "ErrorStack",
    "ErrorType",
    "JsonValue",
    "KAFKA_OFFSET_MAX",
    "KAFKA_PARTITION_MAX",
    "KafkaOffset",
    "KafkaPartition",
    "LABEL_MAX_CHARS",
    "Label",
    "MESSAGE_ID_MAX_CHARS",
    "METADATA_MAX_KEYS",
    "METADATA_MAX_KEY_CHARS",
    "METADATA_MAX_STRING_CHARS",
    "MessageId",
    "Metadata",
    "MetadataValue",
    "NAME_MAX_CHARS",
    "NAME_PATTERN",
    "Name",
    "REASON_MAX_CHARS",
    "Reason",
    "SEQ_MAX",
    "Seq",
    "TIMESTAMP_MAX",
    "TIMESTAMP_MIN",
    "Timestamp",
    "control_character_problem",
    "non_finite_problem",
]

# --- integers: the ClickHouse column types ---------------------------------------------------

UINT32_MAX: Final = 2**32 - 1
UINT64_MAX: Final = 2**64 - 1

ATTEMPT_MAX: Final = UINT32_MAX
"""`attempt UInt32` (events and steps tables)."""
SEQ_MAX: Final = UINT64_MAX
"""`seq UInt64` (events table)."""
KAFKA_PARTITION_MAX: Final = 2**31 - 1
"""Kafka partitions are int32."""
KAFKA_OFFSET_MAX: Final = 2**63 - 1
"""Kafka offsets are int64."""

Attempt = Annotated[int, Field(ge=1, le=ATTEMPT_MAX)]
Seq = Annotated[int, Field(ge=0, le=SEQ_MAX)]
KafkaPartition = Annotated[int, Field(ge=0, le=KAFKA_PARTITION_MAX)]
KafkaOffset = Annotated[int, Field(ge=0, le=KAFKA_OFFSET_MAX)]

# --- timestamps: DateTime64(6, 'UTC') -------------------------------------------------------

TIMESTAMP_MIN: Final = datetime(1900, 1, 1, tzinfo=UTC)
TIMESTAMP_MAX: Final = datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
"""The range of ClickHouse's DateTime64(6, 'UTC'), the type of every time column."""

Timestamp = Annotated[
    AwareDatetime,
    # Checked by pydantic-core after the offset is applied: 2300-01-01T03:00+05:00 is in range.
    Field(
        ge=TIMESTAMP_MIN,
        le=TIMESTAMP_MAX,
        # JSON Schema has no range for date-times; ajv-formats reads these, others ignore them.
        json_schema_extra={
            "formatMinimum": "1900-01-01T00:00:00Z",
            "formatMaximum": "2299-12-31T23:59:59.999999Z",
        },
    ),
]
"""A point in time with its UTC offset, within DateTime64's range; naive datetimes are refused
(whose clock would they be?)."""

DURATION_MS_MAX: Final = int((TIMESTAMP_MAX - TIMESTAMP_MIN).total_seconds() * 1000)
"""The whole span of a timestamp (about 400 years): a deadline or delay longer than this lands
outside DateTime64 (and past what Python's timedelta holds) when added to a time."""

DeadlineMs = Annotated[int, Field(gt=0, le=DURATION_MS_MAX)]
DelayMs = Annotated[int, Field(ge=0, le=DURATION_MS_MAX)]
DurationMs = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""A measured duration (`Nullable(Float64)`): finite, not negative."""

# --- identifiers ----------------------------------------------------------------------------

NAME_MAX_CHARS: Final = 200
MESSAGE_ID_MAX_CHARS: Final = 128

CONTROL_CHARACTERS: Final = r"\x00-\x1f\x7f-\x9f"
"""C0 (NUL to U+001F), DEL and C1 (U+0080 to U+009F), as a regex character range that Python,
pydantic-core (Rust) and JSON Schema (ECMA-262) all read the same way."""
CONTROL_CHARACTER: Final = re.compile(f"[{CONTROL_CHARACTERS}]")
NAME_PATTERN: Final = f"^[^{CONTROL_CHARACTERS}]+$"
"""An identifier: no control characters (they end up in table keys, logs and terminals)."""
KEY_SEGMENT_PATTERN: Final = f"^[^/{CONTROL_CHARACTERS}]+$"
"""A name that is one segment of a flows-topic key: no "/" either."""
MATCH_PATH_PATTERN: Final = (
    f"^[^.{CONTROL_CHARACTERS}]+(\\.[^.{CONTROL_CHARACTERS}]+)*$"
)

Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX_CHARS, pattern=NAME_PATTERN)]
"""Project, flow, run id, step key, event name, app: short identifiers that end up in table
keys."""

MessageId = Annotated[
    str, Field(min_length=1, max_length=MESSAGE_ID_MAX_CHARS, pattern=NAME_PATTERN)
]
"""An event or command id; unique, so re-deliveries can be dropped."""

KeySegment = Annotated[
    str, Field(min_length=1, max_length=NAME_MAX_CHARS, pattern=KEY_SEGMENT_PATTERN)
]
"""A name that becomes one segment of a flows-topic key, so it cannot contain "/"."""

MatchPath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=NAME_MAX_CHARS,
        pattern=MATCH_PATH_PATTERN,
        description="Dotted path into the signal as a JSON object, e.g. 'data.order_id'; "
        "a segment of digits indexes an array.",
    ),
]
"""Where a wait's match value is read: the same path in the run's trigger event (by the worker,
giving `match_value`) and in each signal of the name (by the signals agent); see
`signals.resolve_match_path`."""


def control_character_problem(value: str) -> str | None:
    """What is wrong with `value` as an identifier's text, or None: the first control character
    and where it is."""
    found = CONTROL_CHARACTER.search(value)
    if found is None:
        return None
    return (
        f"control character U+{ord(found.group()):04X} at index {found.start()} is not allowed "
        "in an identifier (no C0, DEL or C1 characters)"
    )


# --- free text ------------------------------------------------------------------------------

ERROR_TYPE_MAX_CHARS: Final = 1024
ERROR_MESSAGE_MAX_CHARS: Final = 32 * 1024
ERROR_STACK_MAX_CHARS: Final = 128 * 1024
REASON_MAX_CHARS: Final = 4 * 1024
LABEL_MAX_CHARS: Final = 1024

ErrorType = Annotated[str, Field(max_length=ERROR_TYPE_MAX_CHARS)]
ErrorMessage = Annotated[str, Field(max_length=ERROR_MESSAGE_MAX_CHARS)]
ErrorStack = Annotated[str, Field(max_length=ERROR_STACK_MAX_CHARS)]
Reason = Annotated[str, Field(max_length=REASON_MAX_CHARS)]
Label = Annotated[str, Field(max_length=LABEL_MAX_CHARS)]
"""A human name shown on the dashboard (a flow's or a step's)."""

# --- JSON values: finite numbers ------------------------------------------------------------


def non_finite_problem(value: Any) -> str | None:
    """Where `value` (a JSON-shaped Python value) holds a number JSON cannot write (NaN,
    Infinity; 1e400 reads as Infinity), as "<dotted path>: <problem>", or None.

    Written to JSON, such a number would silently become null: the value would not be the one
    the producer sent.
    """
    kind = type(value)
    if kind is float:
        return None if math.isfinite(value) else "not a finite number"
    if kind is dict:
        items: Any = value.items()
    elif kind is list:
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        item_kind = type(item)
        # Only containers and floats can hold a non-finite number: skip the rest unvisited
        # (the common payload is a few strings and ints).
        if item_kind is float or item_kind is dict or item_kind is list:
            problem = non_finite_problem(item)
            if problem is not None:
                inner, _, rest = problem.partition(": ")
                if rest:
                    return f"{key}.{inner}: {rest}"
                return f"{key}: {problem} ({item!r})"
    return None


def _all_finite(value: Any) -> bool:
    # The fast yes/no behind _require_finite (the processors decode ~100k events/s): floats
    # checked inline, no path kept. `x - x` is 0.0 for every finite float, NaN otherwise.
    items = value.values() if type(value) is dict else value
    for item in items:
        kind = type(item)
        if kind is float:
            if item - item != 0.0:
                return False
        elif (kind is dict or kind is list) and not _all_finite(item):
            return False
    return True


def _require_finite(value: AnyJsonValue) -> AnyJsonValue:
    kind = type(value)
    if kind is float:
        finite = value - value == 0.0  # type: ignore[operator]
    elif kind is dict or kind is list:
        finite = _all_finite(value)
    else:
        return value
    problem = None if finite else non_finite_problem(value)
    if problem is not None:
        raise ValueError(
            f"{problem}; JSON numbers must be finite (a literal such as 1e400 overflows to "
            "Infinity)"
        )
    return value


JsonValue = Annotated[AnyJsonValue, AfterValidator(_require_finite)]
"""Any JSON value whose numbers are all finite (input, output, data, match_value)."""

# --- metadata -------------------------------------------------------------------------------

METADATA_MAX_KEYS: Final = 64
METADATA_MAX_KEY_CHARS: Final = 100
METADATA_MAX_STRING_CHARS: Final = 1024


def _metadata_value_schema(source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
    # One union with one error message: a plain `str | int | float | bool` union reports one
    # error per member ("should be a valid string", "... integer", ...), each under a location
    # suffixed with the member's name, which is noise to whoever reads the dead letter.
    scalars = core_schema.union_schema(
        [
            core_schema.str_schema(max_length=METADATA_MAX_STRING_CHARS),
            core_schema.int_schema(),
            core_schema.float_schema(allow_inf_nan=False),
            core_schema.bool_schema(),
        ],
        custom_error_type="metadata_value",
        custom_error_message=(
            "Input should be a string of at most "
            f"{METADATA_MAX_STRING_CHARS} characters, a finite number, a boolean or null"
        ),
    )
    return core_schema.nullable_schema(scalars)


MetadataValue = Annotated[
    str | int | float | bool | None, GetPydanticSchema(_metadata_value_schema)
]
"""Metadata holds flat diagnostic values (ids, counts, status codes), never nested documents."""

MetadataKey = Annotated[str, Field(min_length=1, max_length=METADATA_MAX_KEY_CHARS)]

Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=METADATA_MAX_KEYS)]
