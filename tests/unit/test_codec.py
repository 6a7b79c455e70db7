"""Encoding and decoding wire messages, and the one clear error for each kind of bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic_core import from_json

from steplog.errors import EventTooLargeError, InvalidEventError
from steplog.schemas.base import WireModel
from steplog.schemas.codec import (
    decode_command,
    decode_dead_letter,
    decode_event,
    decode_flows_message,
    decode_signal,
    decode_signals_message,
    encode,
    validate_command,
    validate_event,
    validate_signal,
)
from steplog.schemas.commands import COMMAND_TYPES
from steplog.schemas.events import EVENT_TYPES, StepStarted, StepStartedPayload
from steplog.schemas.export import PACKAGE_DIR
from steplog.schemas.flows import FLOWS_MESSAGE_TYPES
from steplog.schemas.golden import golden_flows_messages, golden_messages
from steplog.schemas.signals import SIGNALS_MESSAGE_TYPES

GOLDEN: dict[str, WireModel] = {**golden_messages(), **golden_flows_messages()}
EXAMPLES = PACKAGE_DIR / "examples"


def _decoder_for(type_tag: str) -> Callable[[bytes], WireModel]:
    if type_tag in EVENT_TYPES:
        return decode_event
    if type_tag in COMMAND_TYPES:
        return decode_command
    if type_tag == "signal":
        return decode_signal
    if type_tag in SIGNALS_MESSAGE_TYPES:
        return decode_signals_message
    if type_tag in FLOWS_MESSAGE_TYPES:
        return decode_flows_message
    return decode_dead_letter


def _golden_event(**changes: Any) -> dict[str, Any]:
    """The golden step.started as a parsed JSON object, with `changes` applied."""
    document: dict[str, Any] = json.loads(encode(GOLDEN["step.started"]))
    document.update(changes)
    return document


def _bytes(document: Any) -> bytes:
    return json.dumps(document).encode()


def _refusal(data: bytes, **kwargs: Any) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as caught:
        decode_event(data, **kwargs)
    return caught.value


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("type_tag", sorted(GOLDEN))
def test_every_type_round_trips_through_encode_and_decode(type_tag: str) -> None:
    message = GOLDEN[type_tag]
    decoded = _decoder_for(type_tag)(encode(message))
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode(decoded) == encode(message)


@pytest.mark.parametrize("type_tag", sorted(GOLDEN))
def test_every_golden_example_file_decodes_and_re_encodes_to_the_same_json(type_tag: str) -> None:
    text = (EXAMPLES / f"{type_tag}.json").read_text(encoding="utf-8")
    decoded = _decoder_for(type_tag)(text.encode())
    assert json.loads(encode(decoded)) == json.loads(text)
    assert decoded == GOLDEN[type_tag]


def test_encode_writes_compact_json() -> None:
    data = encode(GOLDEN["step.started"])
    compact = json.dumps(json.loads(data), separators=(",", ":"), ensure_ascii=False)
    assert data == compact.encode()
    assert data.startswith(b'{"event_id":"')


def test_timestamps_keep_their_utc_offset() -> None:
    ts = datetime(2025, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=-5)))
    data = _bytes(_golden_event(ts=ts.isoformat()))
    event = decode_event(data)
    assert event.ts == ts and event.ts.utcoffset() == timedelta(hours=-5)


def test_a_missing_schema_version_reads_as_version_1() -> None:
    document = _golden_event()
    del document["schema_version"]
    assert decode_event(_bytes(document)).schema_version == 1


def test_validate_event_reads_parsed_json_and_python_values_alike() -> None:
    event = GOLDEN["step.started"]
    assert validate_event(json.loads(encode(event))) == event
    assert validate_event(event.model_dump()) == event  # datetimes and enum members


def test_validate_signal_and_command_use_the_same_rules() -> None:
    assert validate_signal(json.loads(encode(GOLDEN["signal"]))) == GOLDEN["signal"]
    start = json.loads(encode(GOLDEN["command.start_run"]))
    assert validate_command(start) == GOLDEN["command.start_run"]
    with pytest.raises(InvalidEventError) as caught:
        validate_command({**start, "start_at": "2025-01-01T00:00:00"})
    assert caught.value.field == "start_at"


# --- refusals: the whole message ------------------------------------------------------------


def test_malformed_json_is_refused_with_its_position() -> None:
    error = _refusal(b'{"type": "step.started", ')
    assert error.field == ""
    assert error.problem.startswith("not JSON")
    assert "line 1 column" in error.problem


def test_invalid_utf8_is_refused_naming_the_byte() -> None:
    error = _refusal(b'{"type": "step.\xff"}')
    assert error.field == ""
    assert "not UTF-8" in error.problem
    assert "0xff" in error.problem and "offset 15" in error.problem


def test_a_json_array_is_refused_as_not_an_object() -> None:
    error = _refusal(b'[{"type": "step.started"}]')
    assert error.field == ""
    assert "expected a JSON object" in error.problem and "array" in error.problem


def test_an_oversized_message_is_refused_before_parsing() -> None:
    error = _refusal(b"not even json, but too long", max_bytes=10)
    assert isinstance(error, EventTooLargeError)
    assert "27 bytes" in error.problem and "limit of 10 bytes" in error.problem
    assert "STEPLOG_MAX_EVENT_BYTES" in error.problem


def test_encode_refuses_an_oversized_event_naming_size_limit_and_setting() -> None:
    event = GOLDEN["step.started"]
    size = len(encode(event))
    with pytest.raises(EventTooLargeError) as caught:
        encode(event, max_bytes=size - 1)
    problem = caught.value.problem
    assert f"{size} bytes" in problem and f"limit of {size - 1} bytes" in problem
    assert "STEPLOG_MAX_EVENT_BYTES" in problem
    assert encode(event, max_bytes=size) == encode(event)


# --- refusals: the envelope -----------------------------------------------------------------


def test_an_unknown_event_type_is_refused_listing_the_known_ones() -> None:
    error = _refusal(_bytes(_golden_event(type="step.exploded")))
    assert error.field == "type"
    assert "'step.exploded'" in error.problem
    assert all(t in error.problem for t in EVENT_TYPES)


def test_a_missing_type_is_refused() -> None:
    document = _golden_event()
    del document["type"]
    error = _refusal(_bytes(document))
    assert error.field == "type"
    assert "missing" in error.problem and "step.started" in error.problem


def test_an_unknown_schema_version_is_named_before_any_other_field() -> None:
    # Version 2 might have renamed fields; the version is the reason, not the fields.
    document = _golden_event(schema_version=2, attempt="2", brand_new_field=True)
    error = _refusal(_bytes(document))
    assert error.field == "schema_version"
    assert error.problem == (
        "unsupported version 2; this build reads version 1 "
        "(a newer major: upgrade this reader, see schemas/COMPATIBILITY.md)"
    )


def test_an_older_or_malformed_schema_version_is_not_called_newer() -> None:
    error = _refusal(_bytes(_golden_event(schema_version="1")))
    assert error.problem == "unsupported version '1'; this build reads version 1"


def test_a_signal_on_the_events_topic_is_an_unknown_event_type() -> None:
    error = _refusal(encode(GOLDEN["signal"]))
    assert error.field == "type" and "'signal'" in error.problem


def test_a_command_of_unknown_type_lists_the_command_types() -> None:
    data = _bytes({**json.loads(encode(GOLDEN["command.cancel_run"])), "type": "command.nuke"})
    with pytest.raises(InvalidEventError) as caught:
        decode_command(data)
    assert caught.value.field == "type"
    assert all(t in caught.value.problem for t in COMMAND_TYPES)


# --- refusals: fields -----------------------------------------------------------------------


def test_an_unknown_field_is_ignored_where_a_newer_writer_adds_it() -> None:
    # Forward compatibility (schemas/COMPATIBILITY.md): a field of a later minor version is
    # skipped, at the top and nested; a known field still gets every check.
    assert decode_event(_bytes(_golden_event(colour="red"))) == GOLDEN["step.started"]
    document = json.loads(encode(GOLDEN["step.failed"]))
    document["payload"]["error"]["code"] = 42
    assert decode_event(_bytes(document)) == GOLDEN["step.failed"]
    assert _refusal(_bytes(_golden_event(colour="red", attempt="2"))).field == "attempt"


def test_a_string_attempt_is_refused_not_coerced() -> None:
    error = _refusal(_bytes(_golden_event(attempt="2")))
    assert error.field == "attempt"
    assert "valid integer" in error.problem and "'2'" in error.problem


def test_a_naive_timestamp_is_refused_asking_for_an_offset() -> None:
    error = _refusal(_bytes(_golden_event(ts="2025-03-14T09:26:54")))
    assert error.field == "ts"
    assert "no UTC offset" in error.problem and "'2025-03-14T09:26:54'" in error.problem


def test_a_number_is_not_a_timestamp() -> None:
    error = _refusal(_bytes(_golden_event(ts=1741944414)))
    assert error.field == "ts"
    assert "datetime" in error.problem


def test_a_step_event_without_step_key_is_refused() -> None:
    document = _golden_event()
    del document["step_key"]
    error = _refusal(_bytes(document))
    assert error.field == "step_key"
    assert error.problem == "required field is missing"


def test_a_missing_nested_field_is_named_by_its_dotted_path() -> None:
    document = json.loads(encode(GOLDEN["step.failed"]))
    del document["payload"]["error"]["message"]
    error = _refusal(_bytes(document))
    assert error.field == "payload.error.message"


def test_nested_metadata_is_refused_with_one_message() -> None:
    document = _golden_event()
    document["payload"]["metadata"]["items"] = [1, 2]
    error = _refusal(_bytes(document))
    assert error.field == "payload.metadata.items"
    assert error.problem == (
        "Input should be a string of at most 1024 characters, a finite number, a boolean or "
        "null, got [1, 2]"
    )


def test_long_values_are_truncated_in_the_message() -> None:
    error = _refusal(_bytes(_golden_event(attempt="9" * 500)))
    shown = error.problem.split("got ", 1)[1]
    assert len(shown) == 80 and shown.endswith("...")


def test_validate_event_refuses_naive_python_datetimes() -> None:
    document = GOLDEN["step.started"].model_dump()
    document["ts"] = datetime(2025, 1, 1)
    with pytest.raises(InvalidEventError) as caught:
        validate_event(document)
    assert caught.value.field == "ts"


def test_validate_event_refuses_values_json_cannot_carry() -> None:
    document = GOLDEN["step.started"].model_dump()
    document["payload"]["input"] = object()
    with pytest.raises(InvalidEventError, match="not JSON-serializable"):
        validate_event(document)


@pytest.mark.parametrize(
    ("decoder", "data"),
    [
        (decode_signal, b"[]"),
        (decode_command, b"[]"),
        (decode_dead_letter, b"[]"),
    ],
)
def test_every_decoder_words_errors_the_same_way(
    decoder: Callable[[bytes], WireModel], data: bytes
) -> None:
    with pytest.raises(InvalidEventError, match="expected a JSON object"):
        decoder(data)


def test_a_valid_message_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fast path must not pre-parse: the diagnosis (from_json) runs only for invalid input.
    calls: list[bytes] = []

    def counting_from_json(data: bytes) -> Any:
        calls.append(data)
        return from_json(data)

    monkeypatch.setattr("steplog.schemas.codec.from_json", counting_from_json)
    decode_event(encode(GOLDEN["step.started"]))
    assert calls == []
    with pytest.raises(InvalidEventError):
        decode_event(_bytes(_golden_event(attempt="2")))
    assert len(calls) == 1


def test_a_python_built_event_encodes_what_decoders_read() -> None:
    event = StepStarted(
        event_id="e1",
        project="acme",
        flow="checkout",
        run_id="r1",
        step_key="charge",
        ts=datetime(2025, 1, 1, tzinfo=UTC),
        payload=StepStartedPayload(input={"amount": 4200, "tags": ["a", None, 1.5]}),
    )
    assert decode_event(encode(event)) == event
