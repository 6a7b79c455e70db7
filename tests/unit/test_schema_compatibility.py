"""The compatibility rules of schemas/COMPATIBILITY.md, on the golden vectors of the next minor.

Both directions of a rolling upgrade, in process:
- an old reader, a newer writer: this build decodes and folds `examples/next/*.json` (every
  message with a minor version and fields it does not know) exactly as the golden message each
  one extends;
- a newer reader, an old writer: "newer" is this same code with a model that has the one extra
  optional field the next minor adds (`NewerStepCompleted` below, a subclass, so the fold's
  isinstance checks treat it as what it extends). It folds today's golden events to the same
  state as this build, and reads the field when a newer writer sends it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Annotated, Any, Union, cast

import pytest
from aiokafka import TopicPartition
from pydantic import Field, JsonValue, TypeAdapter

from steplog.errors import InvalidEventError
from steplog.processors.fold.effects import Effect
from steplog.processors.fold.run import fold_events
from steplog.processors.fold.signals import NameTriggers, NameWaits, apply_signals_message
from steplog.processors.fold.state_format import state_to_bytes
from steplog.producers.command_commits import CommandCommits
from steplog.producers.command_intake import CommandIntake
from steplog.producers.run_executor import RunExecutor
from steplog.producers.workflow import ServedApp
from steplog.schemas.base import WireModel
from steplog.schemas.codec import (
    decode_command,
    decode_dead_letter,
    decode_event,
    decode_flows_message,
    decode_signals_message,
    encode,
)
from steplog.schemas.commands import COMMAND_TYPES
from steplog.schemas.events import (
    EVENT_MODELS,
    EVENT_TYPES,
    Event,
    StepCompleted,
    StepCompletedPayload,
)
from steplog.schemas.export import PACKAGE_DIR
from steplog.schemas.flows import FLOWS_MESSAGE_TYPES
from steplog.schemas.golden import (
    NEXT_FIELD,
    NEXT_MINOR,
    golden_flow_definition,
    golden_flows_messages,
    golden_messages,
)
from steplog.schemas.signals import SIGNALS_MESSAGE_TYPES, SignalsMessage
from steplog.settings import Settings

GOLDEN: dict[str, WireModel] = {**golden_messages(), **golden_flows_messages()}
NEXT = PACKAGE_DIR / "examples" / "next"


def next_bytes(type_tag: str) -> bytes:
    return (NEXT / f"{type_tag}.json").read_bytes()


def decoder_for(type_tag: str) -> Callable[[bytes], Any]:
    if type_tag in EVENT_TYPES:
        return decode_event
    if type_tag in COMMAND_TYPES:
        return decode_command
    if type_tag in SIGNALS_MESSAGE_TYPES:
        return decode_signals_message
    if type_tag in FLOWS_MESSAGE_TYPES:
        return decode_flows_message
    return decode_dead_letter


# --- an old reader, a newer writer ------------------------------------------------------------


@pytest.mark.parametrize("type_tag", sorted(GOLDEN))
def test_this_build_reads_the_next_minor_as_the_message_it_extends(type_tag: str) -> None:
    document = json.loads(next_bytes(type_tag))
    assert document["schema_minor"] == NEXT_MINOR and NEXT_FIELD in document
    assert decoder_for(type_tag)(next_bytes(type_tag)) == GOLDEN[type_tag]


def run_events(decode: Callable[[bytes], Any], read: Callable[[str], bytes]) -> list[Any]:
    return sorted(
        (decode(read(tag)) for tag in EVENT_TYPES), key=lambda event: (event.seq, event.type)
    )


def folded(events: Sequence[Event]) -> tuple[bytes, list[Effect]]:
    state, effects = fold_events(events, golden_flow_definition())
    return state_to_bytes(state), effects


def golden_bytes(type_tag: str) -> bytes:
    return encode(GOLDEN[type_tag])


def test_this_build_folds_a_newer_sdks_events_as_it_folds_its_own() -> None:
    assert folded(run_events(decode_event, next_bytes)) == folded(
        run_events(decode_event, golden_bytes)
    )


def signals_effects(read: Callable[[str], bytes]) -> list[Effect]:
    waits, triggers, effects = NameWaits(), NameTriggers(), []
    order = ("trigger.registered", "wait.registered", "signal", "wait.ended")
    for type_tag in order:
        message: SignalsMessage = decode_signals_message(read(type_tag))
        effects += apply_signals_message(waits, triggers, message, message.ts)
    return effects


def test_this_build_applies_a_newer_writers_signals_as_its_own() -> None:
    effects = signals_effects(next_bytes)
    assert effects and effects == signals_effects(golden_bytes)


def test_a_stored_signals_state_with_a_newer_field_is_read() -> None:
    # A partition handed back from a newer processor during the roll: its stored state may
    # carry a field this build does not know.
    waits = NameWaits()
    waits.remember("e1")
    stored = json.loads(waits.to_bytes())
    assert NameWaits.from_bytes(json.dumps({**stored, NEXT_FIELD: 1}).encode()).recent_set == {"e1"}


# --- a newer reader, an old writer ------------------------------------------------------------


class NewerStepCompletedPayload(StepCompletedPayload):
    """The payload as the next minor declares it: one more optional field."""

    added_in_next: JsonValue = None


class NewerStepCompleted(StepCompleted):
    payload: NewerStepCompletedPayload


# The event union with NewerStepCompleted in StepCompleted's place: a type built at run time,
# which the type checker cannot follow (hence Any).
_NEWER_EVENT_TYPE: Any = Annotated[
    Union[  # noqa: UP007 (a union built from a tuple at run time)
        tuple(
            NewerStepCompleted if model is StepCompleted else model
            for model in EVENT_MODELS.values()
        )
    ],
    Field(discriminator="type"),
]
NEWER_EVENT: TypeAdapter[Any] = TypeAdapter(_NEWER_EVENT_TYPE)


def test_the_simulated_newer_model_declares_the_next_minors_field() -> None:
    assert NEXT_FIELD in NewerStepCompletedPayload.model_fields


def test_a_newer_processor_folds_todays_events_as_this_build_does() -> None:
    newer = run_events(NEWER_EVENT.validate_json, golden_bytes)
    assert any(isinstance(event, NewerStepCompleted) for event in newer)
    assert folded(newer) == folded(run_events(decode_event, golden_bytes))


def test_a_newer_processor_reads_the_field_a_newer_writer_sends() -> None:
    event = NEWER_EVENT.validate_json(next_bytes("step.completed"))
    assert event.payload.added_in_next == json.loads(next_bytes("step.completed"))[NEXT_FIELD]
    assert NEWER_EVENT.validate_json(golden_bytes("step.completed")).payload.added_in_next is None


# --- what a minor may not do --------------------------------------------------------------------


def test_an_enum_value_this_build_does_not_know_is_refused_naming_field_and_value() -> None:
    # A new enum value ships readers first (COMPATIBILITY.md); one that arrives early is
    # dead-lettered with this reason, never read as some other value.
    document = json.loads(golden_bytes("step.started"))
    document["payload"]["kind"] = "run_in_parallel"
    with pytest.raises(InvalidEventError) as caught:
        decode_event(json.dumps(document).encode())
    assert caught.value.field == "payload.kind" and "'run_in_parallel'" in caught.value.problem


def test_a_next_major_is_refused_saying_to_upgrade_the_reader() -> None:
    document = {**json.loads(next_bytes("command.start_run")), "schema_version": 2}
    with pytest.raises(InvalidEventError) as caught:
        decode_command(json.dumps(document).encode())
    assert caught.value.field == "schema_version"
    assert "newer major: upgrade this reader" in caught.value.problem


def test_a_worker_skips_a_next_major_command_with_an_error_saying_to_upgrade(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Only decoding and the log are exercised: the app, settings and executor are stand-ins
    # with the one attribute each that a refused command touches.
    executor = SimpleNamespace(stats=SimpleNamespace(commands=0))
    intake = CommandIntake(
        cast(ServedApp, None),
        cast(Settings, SimpleNamespace(max_event_bytes=1024 * 1024)),
        cast(RunExecutor, executor),
        CommandCommits(),
        concurrency=1,
    )
    document = {**json.loads(golden_bytes("command.resume_run")), "schema_version": 2}
    with caplog.at_level(logging.WARNING, logger="steplog.worker"):
        intake._accept(TopicPartition("commands", 0), 7, json.dumps(document).encode())
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert "offset 7: schema_version: unsupported version 2" in record.getMessage()
    assert "upgrade this reader" in record.getMessage()
