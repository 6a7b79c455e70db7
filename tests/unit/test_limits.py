"""Every field's limits (`schemas/limits.py`): the types at their edges, the codec's words for a
refusal, and the SDK's hot path agreeing with the models."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from steplog.errors import InvalidEventError, MetadataError
from steplog.producers.client import Client
from steplog.producers.event_bytes import encode_name
from steplog.producers.sink import MemorySink
from steplog.schemas import limits
from steplog.schemas.codec import DEFAULT_MAX_BYTES, decode_event, validate_event
from steplog.schemas.flows import RetryPolicy


def accepts(annotation: Any, value: Any, *, json_mode: bool = False) -> bool:
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    try:
        if json_mode:
            adapter.validate_json(value)
        else:
            adapter.validate_python(value, strict=True)
    except ValidationError:
        return False
    return True


# --- integers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "inside", "outside"),
    [
        (limits.Attempt, [1, 2**32 - 1], [0, 2**32, 2**70]),
        (limits.Seq, [0, 2**64 - 1], [-1, 2**64]),
        (limits.KafkaPartition, [0, 2**31 - 1], [-1, 2**31]),
        (limits.KafkaOffset, [0, 2**63 - 1], [-1, 2**63]),
        (limits.DeadlineMs, [1, limits.DURATION_MS_MAX], [0, limits.DURATION_MS_MAX + 1]),
        (limits.DelayMs, [0, limits.DURATION_MS_MAX], [-1, limits.DURATION_MS_MAX + 1]),
    ],
)
def test_integers_stay_within_their_column_types(
    annotation: Any, inside: list[int], outside: list[int]
) -> None:
    assert [accepts(annotation, value) for value in inside] == [True] * len(inside)
    assert [accepts(annotation, value) for value in outside] == [False] * len(outside)


def test_a_deadline_at_its_limit_added_to_the_earliest_time_stays_in_range() -> None:
    latest = limits.TIMESTAMP_MIN + timedelta(milliseconds=limits.DURATION_MS_MAX)
    assert latest <= limits.TIMESTAMP_MAX


# --- timestamps -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "inside"),
    [
        ("1900-01-01T00:00:00Z", True),
        ("2299-12-31T23:59:59.999999Z", True),
        ("2300-01-01T04:59:59+05:00", True),  # 2299-12-31T23:59:59Z
        ("1899-12-31T23:59:59.999999Z", False),
        ("1900-01-01T00:30:00+01:00", False),  # 1899-12-31T23:30:00Z
        ("2300-01-01T00:00:00Z", False),
        ("9999-12-31T23:59:59-01:00", False),
        ("0001-01-01T00:00:00+01:00", False),
    ],
)
def test_timestamps_are_within_datetime64s_range_after_their_offset(
    text: str, inside: bool
) -> None:
    assert accepts(limits.Timestamp, json.dumps(text), json_mode=True) is inside


def test_python_datetimes_are_held_to_the_same_range() -> None:
    assert accepts(limits.Timestamp, datetime(2299, 12, 31, 23, tzinfo=UTC))
    assert not accepts(limits.Timestamp, datetime(2300, 1, 1, tzinfo=UTC))
    assert not accepts(limits.Timestamp, datetime(1900, 1, 1, tzinfo=timezone(timedelta(hours=1))))


# --- identifiers ----------------------------------------------------------------------------

CONTROL = ["\x00", "\x01", "\t", "\n", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f"]
PRINTABLE = ["a b", "étape ✓", "日本", "\xa0nbsp", "a/b", "emoji 🎉", "x" * 200]


@pytest.mark.parametrize("annotation", [limits.Name, limits.MessageId, limits.KeySegment])
def test_identifiers_refuse_every_control_character(annotation: Any) -> None:
    assert [accepts(annotation, f"a{c}b") for c in CONTROL] == [False] * len(CONTROL)
    assert accepts(annotation, "a b\u00a0é")


def test_names_are_1_to_200_characters() -> None:
    assert accepts(limits.Name, "x" * limits.NAME_MAX_CHARS)
    assert not accepts(limits.Name, "x" * (limits.NAME_MAX_CHARS + 1))
    assert not accepts(limits.Name, "")


def test_key_segments_refuse_a_slash_and_match_paths_refuse_control_characters() -> None:
    assert not accepts(limits.KeySegment, "a/b")
    assert accepts(limits.MatchPath, "data.order_id")
    assert not accepts(limits.MatchPath, "data.order\x00id")


@pytest.mark.parametrize("text", [f"a{c}b" for c in CONTROL] + PRINTABLE + ["", "x" * 201])
def test_the_sdks_name_check_agrees_with_the_model(text: str) -> None:
    try:
        encode_name("run_id", text)
        sdk = True
    except InvalidEventError as exc:
        assert exc.field == "run_id"
        sdk = False
    assert sdk is accepts(limits.Name, text)


def test_the_control_character_is_named_with_its_code_point_and_index() -> None:
    with pytest.raises(InvalidEventError) as caught:
        encode_name("step_key", "ab\x85c")
    assert caught.value.field == "step_key"
    assert "U+0085 at index 2" in caught.value.problem


# --- finite numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("1e400", ""),
        ("NaN", ""),
        ("-Infinity", ""),
        ('{"a": [1, 2.5, 1e400]}', "a.2"),
        ('{"a": {"b": [{"c": NaN}]}}', "a.b.0.c"),
    ],
)
def test_json_values_refuse_numbers_json_cannot_write(text: str, path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TypeAdapter(limits.JsonValue).validate_json(text)
    message = str(caught.value.errors()[0]["ctx"]["error"])
    assert message.startswith(f"{path}: " if path else "not a finite number")


def test_json_values_keep_big_integers_and_the_largest_float() -> None:
    adapter = TypeAdapter(limits.JsonValue)
    assert adapter.validate_json('{"big": 1180591620717411303424, "f": 1.7976931348623157e308}') == {
        "big": 2**70, "f": 1.7976931348623157e308,
    }
    with pytest.raises(ValidationError):
        adapter.validate_python({"x": [math.inf]})


@pytest.mark.parametrize("text", ["1e400", "NaN", "Infinity", "-1"])
def test_durations_are_finite_and_not_negative(text: str) -> None:
    assert not accepts(limits.DurationMs, text, json_mode=True)


def test_every_float_field_of_a_wire_model_is_finite() -> None:
    with pytest.raises(ValidationError):
        RetryPolicy(multiplier=math.inf)


# --- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "limit"),
    [
        (limits.ErrorType, limits.ERROR_TYPE_MAX_CHARS),
        (limits.ErrorMessage, limits.ERROR_MESSAGE_MAX_CHARS),
        (limits.ErrorStack, limits.ERROR_STACK_MAX_CHARS),
        (limits.Reason, limits.REASON_MAX_CHARS),
        (limits.Label, limits.LABEL_MAX_CHARS),
    ],
)
def test_texts_are_bounded(annotation: Any, limit: int) -> None:
    assert accepts(annotation, "x" * limit)
    assert not accepts(annotation, "x" * (limit + 1))


def test_an_error_at_its_limits_fits_the_default_event_size_in_any_utf8() -> None:
    longest = (
        limits.ERROR_TYPE_MAX_CHARS + limits.ERROR_MESSAGE_MAX_CHARS + limits.ERROR_STACK_MAX_CHARS
    )
    assert longest * 4 < DEFAULT_MAX_BYTES - 64 * 1024


def test_metadata_is_bounded_on_the_wire_as_in_the_sdk() -> None:
    adapter = TypeAdapter(limits.Metadata)
    adapter.validate_python({f"k{i}": "x" * limits.METADATA_MAX_STRING_CHARS for i in range(64)})
    for refused in (
        {f"k{i}": 1 for i in range(limits.METADATA_MAX_KEYS + 1)},
        {"k" * (limits.METADATA_MAX_KEY_CHARS + 1): 1},
        {"": 1},
        {"k": "x" * (limits.METADATA_MAX_STRING_CHARS + 1)},
        {"k": math.nan},
    ):
        with pytest.raises(ValidationError):
            adapter.validate_python(refused)


# --- the codec names the field and the limit ------------------------------------------------


def step_completed(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "event_id": "e1", "type": "step.completed", "schema_version": 1, "project": "shop",
        "flow": "checkout", "run_id": "r1", "attempt": 1, "ts": "2024-05-01T12:00:00Z",
        "seq": 1, "step_key": "charge", "payload": {"output": None, "duration_ms": 1.0},
    }
    document.update(changes)
    return document


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        (json.dumps(step_completed(attempt=2**32)), "attempt", "4294967295, got 4294967296"),
        (json.dumps(step_completed(attempt=2**70)), "attempt", "4294967295"),
        (json.dumps(step_completed(seq=2**64)), "seq", "18446744073709551615"),
        (json.dumps(step_completed(run_id="a\x00b")), "run_id", "U+0000 at index 1"),
        (json.dumps(step_completed(ts="2300-01-01T00:00:00Z")), "ts", "2299-12-31T23:59:59"),
        (
            json.dumps(step_completed(payload={"output": {"x": 1}})).replace('1}}', '1e400}}'),
            "payload.output.x", "finite",
        ),
        (
            json.dumps(step_completed(payload={"duration_ms": 1})).replace(": 1}", ": 1e400}"),
            "payload.duration_ms", "finite",
        ),
    ],
)
def test_decode_refuses_each_limit_naming_the_field_and_the_limit(
    raw: str, field: str, words: str
) -> None:
    with pytest.raises(InvalidEventError) as caught:
        decode_event(raw.encode())
    assert caught.value.field == field
    assert words in caught.value.problem


def test_a_mapping_with_an_infinity_is_refused_not_stored_as_null() -> None:
    # The ingest API parses 1e400 into inf; validate_event must not write it as null.
    with pytest.raises(InvalidEventError) as caught:
        validate_event(step_completed(payload={"output": {"x": math.inf}}))
    assert caught.value.field == "payload.output.x"


# --- the SDK tells the caller ---------------------------------------------------------------


def test_the_sdk_refuses_outside_values_where_the_step_is_called() -> None:
    client = Client("shop", sink=MemorySink())
    run = client.run("checkout", run_id="r1")
    ran: list[bool] = []
    with pytest.raises(InvalidEventError, match="step_key"):
        run.step("charge\x00", lambda: ran.append(True))
    with pytest.raises(MetadataError, match="finite"):
        run.step("charge", lambda: ran.append(True), metadata={"ratio": math.inf})
    with pytest.raises(InvalidEventError, match="reason"):
        run.skip("ship", reason="r" * (limits.REASON_MAX_CHARS + 1))
    with pytest.raises(InvalidEventError) as caught:
        client.record_step(
            flow_key="checkout", run_id="r1", step_key="s", status="success", attempt=2**32
        )
    assert caught.value.field == "attempt" and "4294967295" in caught.value.problem
    assert ran == [] and client.sink.messages == []  # type: ignore[attr-defined]


def test_record_step_cuts_a_long_error_message_instead_of_losing_the_failure() -> None:
    sink = MemorySink()
    client = Client("shop", sink=sink)
    client.record_step(
        flow_key="checkout", run_id="r1", step_key="s", status="error",
        error=RuntimeError("m" * (limits.ERROR_MESSAGE_MAX_CHARS * 2)),
    )
    (_, value), = sink.messages
    assert len(decode_event(value).payload.error.message) < limits.ERROR_MESSAGE_MAX_CHARS  # type: ignore[union-attr]
