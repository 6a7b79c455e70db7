"""The wire models, statuses and the generated contract files (JSON Schemas, golden examples)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from steplog.errors import EventTooLargeError, InvalidEventError
from steplog.schemas import export
from steplog.schemas.codec import decode_event
from steplog.schemas.commands import COMMAND_TYPES
from steplog.schemas.dead_letters import DeadLetter
from steplog.schemas.events import (
    EVENT_TYPES,
    RunResumed,
    StepCompletedPayload,
    StepKind,
    StepStarted,
    StepStartedPayload,
    new_event_id,
)
from steplog.schemas.flows import FLOWS_MESSAGE_TYPES
from steplog.schemas.golden import golden_flows_messages, golden_messages
from steplog.schemas.signals import SIGNALS_MESSAGE_TYPES
from steplog.schemas.statuses import (
    DERIVED_STEP_STATUSES,
    RunStatus,
    StepStatus,
    parse_step_status,
)

TS = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
RUN: dict[str, Any] = {"event_id": "e1", "project": "acme", "flow": "checkout", "run_id": "r1", "ts": TS}

# --- statuses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "status"),
    [
        ("scheduled", StepStatus.SCHEDULED),
        ("running", StepStatus.RUNNING),
        ("retrying", StepStatus.RETRYING),
        ("completed", StepStatus.COMPLETED),
        ("failed", StepStatus.FAILED),
        ("interrupted", StepStatus.INTERRUPTED),
        ("skipped", StepStatus.SKIPPED),
        ("success", StepStatus.COMPLETED),
        ("succeeded", StepStatus.COMPLETED),
        ("error", StepStatus.FAILED),
        ("pending", StepStatus.SCHEDULED),
        ("  SUCCESS ", StepStatus.COMPLETED),
        ("Error", StepStatus.FAILED),
    ],
)
def test_parse_step_status_maps_ours_and_the_seed_sdk_words(word: str, status: StepStatus) -> None:
    assert parse_step_status(word) is status


@pytest.mark.parametrize("word", ["missing", "stuck", " Stuck "])
def test_parse_step_status_refuses_derived_statuses(word: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_step_status(word)
    assert caught.value.field == "status"
    assert "derived" in caught.value.problem
    assert "expected one of" in caught.value.problem


@pytest.mark.parametrize("word", ["done", "", "cancelled"])
def test_parse_step_status_refuses_unknown_words_listing_the_accepted_ones(word: str) -> None:
    with pytest.raises(InvalidEventError) as caught:
        parse_step_status(word)
    assert caught.value.field == "status"
    for accepted in ("scheduled", "skipped", "success", "succeeded", "error", "pending"):
        assert accepted in caught.value.problem


def test_step_statuses_are_the_run_statuses_minus_cancelled_plus_skipped() -> None:
    stored_runs = {s.value for s in RunStatus} - {"overdue", "stuck"}
    stored_steps = {s.value for s in StepStatus} - {s.value for s in DERIVED_STEP_STATUSES}
    assert stored_steps == stored_runs - {"cancelled", "expired"} | {"skipped"}


# --- models ---------------------------------------------------------------------------------


def _step_started(**changes: Any) -> dict[str, Any]:
    """A valid step.started as keyword arguments, with `changes` applied."""
    return {**RUN, "type": "step.started", "step_key": "s", **changes}


def test_a_valid_python_mapping_builds_an_event() -> None:
    assert StepStarted.model_validate(_step_started()).step_key == "s"


def test_models_are_strict_in_python_too() -> None:
    with pytest.raises(ValidationError, match="valid integer"):
        StepStarted.model_validate(_step_started(attempt="2"))
    with pytest.raises(ValidationError, match="instance of StepKind"):
        StepStartedPayload.model_validate({"kind": "run"})


def test_models_ignore_unknown_fields() -> None:
    # A newer minor version's field (schemas/COMPATIBILITY.md): read past, not kept.
    payload = StepStartedPayload.model_validate({"kind": StepKind.RUN, "colour": "red"})
    assert payload == StepStartedPayload(kind=StepKind.RUN)
    assert "colour" not in payload.model_dump()


def test_models_are_frozen() -> None:
    event = StepStarted.model_validate(_step_started())
    with pytest.raises(ValidationError, match="frozen"):
        event.attempt = 2  # type: ignore[misc]


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        StepStarted.model_validate(_step_started(ts=datetime(2025, 1, 2)))


def test_step_events_need_a_step_key_and_run_events_have_none() -> None:
    without_key = {k: v for k, v in _step_started().items() if k != "step_key"}
    with pytest.raises(ValidationError, match="step_key"):
        StepStarted.model_validate(without_key)
    # A run event has no step_key field: one sent anyway is an unknown field, read past.
    assert not hasattr(RunResumed.model_validate({**RUN, "step_key": "s"}), "step_key")


def test_defaults_fill_what_a_producer_may_leave_out() -> None:
    event = StepStarted(
        event_id="e1", project="acme", flow="checkout", run_id="r1", ts=TS, step_key="s"
    )
    assert (event.type, event.schema_version, event.attempt, event.seq) == ("step.started", 1, 1, 0)
    assert event.payload == StepStartedPayload(kind=StepKind.INSTRUMENTED, input=None, metadata={})


def test_negative_durations_are_refused() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        StepCompletedPayload(duration_ms=-1.0)


def test_new_event_ids_are_unique_hex() -> None:
    ids = {new_event_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_dead_letter_keeps_the_reason_field_and_original_bytes() -> None:
    value = b'\xff{"type": "step.started"}'
    try:
        decode_event(value)
    except InvalidEventError as error:
        letter = DeadLetter.for_message(error, "steplog.events", 2, 7, b"run-1", value, ts=TS)
    assert letter.field == ""
    assert letter.reason.startswith("not UTF-8")
    assert (letter.source_topic, letter.partition, letter.offset) == ("steplog.events", 2, 7)
    assert base64.b64decode(letter.key_b64 or "") == b"run-1"
    assert base64.b64decode(letter.value_b64) == value
    assert (letter.value_bytes, letter.value_truncated) == (len(value), False)


def test_dead_letter_of_an_oversized_message_keeps_only_its_first_bytes() -> None:
    value = b"x" * 100
    error = EventTooLargeError("", "event is 100 bytes, over the limit of 10 bytes")
    letter = DeadLetter.for_message(error, "t", 0, 0, None, value, max_value_bytes=10)
    assert letter.key_b64 is None
    assert base64.b64decode(letter.value_b64) == b"x" * 10
    assert (letter.value_bytes, letter.value_truncated) == (100, True)


# --- generated files ------------------------------------------------------------------------

REGENERATE = "run `python -m steplog.schemas.export` and commit the result"


def test_generated_files_match_the_committed_ones(tmp_path: Path) -> None:
    written = export.write_files(tmp_path)
    assert written, "nothing was generated"
    drifted = [
        relative
        for relative in written
        if (export.PACKAGE_DIR / relative).read_text(encoding="utf-8")
        != (tmp_path / relative).read_text(encoding="utf-8")
        if (export.PACKAGE_DIR / relative).exists()
    ]
    missing = [r for r in written if not (export.PACKAGE_DIR / r).exists()]
    assert not drifted and not missing, f"drifted {drifted}, missing {missing}: {REGENERATE}"
    assert export.find_drift() == [], REGENERATE


def test_export_is_deterministic(tmp_path: Path) -> None:
    assert export.render_files() == export.render_files()
    export.write_files(tmp_path)
    assert export.write_files(tmp_path) == []


def test_check_reports_changed_and_stale_files_without_writing(tmp_path: Path) -> None:
    export.write_files(tmp_path)
    (tmp_path / "json/event.schema.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "examples/step.renamed.json").write_text("{}\n", encoding="utf-8")
    assert export.find_drift(tmp_path) == ["examples/step.renamed.json", "json/event.schema.json"]
    assert (tmp_path / "json/event.schema.json").read_text(encoding="utf-8") == "{}\n"
    assert export.write_files(tmp_path) == ["examples/step.renamed.json", "json/event.schema.json"]
    assert not (tmp_path / "examples/step.renamed.json").exists()


def test_check_command_exits_1_on_drift_and_0_once_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export.main(["--check"], root=tmp_path) == 1
    out = capsys.readouterr().out
    assert "json/event.schema.json" in out and "python -m steplog.schemas.export" in out
    assert not list(tmp_path.iterdir()), "--check wrote files"
    assert export.main([], root=tmp_path) == 0
    assert export.main(["--check"], root=tmp_path) == 0


def test_there_is_one_golden_example_per_type() -> None:
    assert set(golden_messages()) == {
        *EVENT_TYPES, *SIGNALS_MESSAGE_TYPES, *COMMAND_TYPES, "dead_letter"
    }
    assert set(golden_flows_messages()) == set(FLOWS_MESSAGE_TYPES)


def test_every_golden_example_has_its_file_and_every_file_its_example() -> None:
    files = {path.stem for path in (export.PACKAGE_DIR / "examples").glob("*.json")}
    assert files == {*golden_messages(), *golden_flows_messages()}


def test_topic_schemas_list_every_type_on_their_topic() -> None:
    signals = json.loads(export.render_schema("signals_message"))
    assert set(signals["discriminator"]["mapping"]) == set(SIGNALS_MESSAGE_TYPES)
    flows = json.loads(export.render_schema("flows_message"))
    assert set(flows["discriminator"]["mapping"]) == set(FLOWS_MESSAGE_TYPES)
    # The single-model schemas stay, for readers of one kind only.
    assert json.loads(export.render_schema("signal"))["properties"]["type"]["const"] == "signal"
    assert json.loads(export.render_schema("flow"))["properties"]["type"]["const"] == "flow.defined"


def test_event_schema_lists_every_event_type_and_requires_the_tags() -> None:
    schema = json.loads(export.render_schema("event"))
    assert set(schema["discriminator"]["mapping"]) == set(EVENT_TYPES)
    assert schema["$id"] == "urn:steplog:schema:v1:event"
    for definition in (schema["$defs"][name] for name in ("StepStarted", "RunResumed")):
        assert {"type", "schema_version", "event_id", "ts"} <= set(definition["required"])
        # Readers ignore unknown fields (COMPATIBILITY.md): the schema allows them.
        assert definition.get("additionalProperties", True) is True
    assert "step_key" in schema["$defs"]["StepStarted"]["required"]
    assert "step_key" not in schema["$defs"]["RunResumed"]["properties"]
