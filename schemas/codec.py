"""Bytes on a topic <-> wire models, with one clear error for anything that is not valid.

Decoding is on the processors' hot path (about 100k events/s), so a valid message costs exactly
one `TypeAdapter.validate_json` call: no pre-parse, no size of anything but `len(data)`. Only
when that call fails does `_diagnose` look again, slowly, to turn pydantic's report into one
InvalidEventError a person can act on (it goes into the dead letter's `reason`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails, PydanticSerializationError, from_json, to_json

from .errors import EventTooLargeError, InvalidEventError

from .base import SCHEMA_VERSION, WireModel, models_by_type
from .commands import Command
from .dead_letters import DeadLetter
from .events import Event
from .flow_control import FlowMessage
from .flows import FlowDefinition, FlowsMessage
from .limits import control_character_problem
from .signals import Signal, SignalsMessage

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SCHEMA_VERSION",
    "decode_command",
    "decode_dead_letter",
    "decode_event",
    "decode_flow",
    "decode_flow_message",
    "decode_flows_message",
    "decode_signal",
    "decode_signals_message",
    "encode",
    "json_kind",
    "validate_command",
    "validate_event",
    "validate_flows_message",
    "validate_signal",
    "validate_signals_message",
]

DEFAULT_MAX_BYTES = 1024 * 1024
"""Largest encoded message accepted; Kafka's default message limit is about the same."""

# The setting that changes the limit, named in errors; this layer does not import the settings.
_LIMIT_SETTING = "STEPLOG_MAX_EVENT_BYTES"
_VALUE_REPR_CHARS = 80

MessageT = TypeVar("MessageT")


@dataclass(frozen=True)
class _MessageKind(Generic[MessageT]):
    """What a decoder needs to know about one kind of message (event, signal, ...)."""

    noun: str
    adapter: TypeAdapter[MessageT]
    models: Mapping[str, type[WireModel]]
    """Each accepted `type` tag and its model."""

    @property
    def tagged(self) -> bool:
        # pydantic prefixes error locations inside a discriminated union with the tag.
        return len(self.models) > 1


def _kind(noun: str, adapter: TypeAdapter[MessageT], message_type: Any) -> _MessageKind[MessageT]:
    return _MessageKind(noun, adapter, models_by_type(message_type))


_EVENTS = _kind("event", TypeAdapter[Event](Event), Event)
_SIGNALS = _kind("signal", TypeAdapter(Signal), Signal)
_COMMANDS = _kind("command", TypeAdapter[Command](Command), Command)
_DEAD_LETTERS = _kind("dead letter", TypeAdapter(DeadLetter), DeadLetter)
_FLOWS = _kind("flow definition", TypeAdapter(FlowDefinition), FlowDefinition)
# The whole topics: a consumer of the signals (or flows) topic reads every kind on it, while
# decode_signal (decode_flow) still reads only its one model, for callers that expect only it.
_SIGNALS_MESSAGES = _kind(
    "signals-topic message", TypeAdapter[SignalsMessage](SignalsMessage), SignalsMessage
)
_FLOWS_MESSAGES = _kind(
    "flows-topic message", TypeAdapter[FlowsMessage](FlowsMessage), FlowsMessage
)
_FLOW_MESSAGES = _kind(
    "flow-control message", TypeAdapter[FlowMessage](FlowMessage), FlowMessage
)


# --- encoding -------------------------------------------------------------------------------


def encode(message: WireModel, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Compact UTF-8 JSON of `message`; EventTooLargeError if it is over `max_bytes`.

    Checked here so that the producer's caller hears about it, not a broker rejecting a batch
    later (where one oversized event would fail its neighbours too).
    """
    # The model's own serializer writes bytes directly (model_dump_json would decode to str).
    data: bytes = message.__pydantic_serializer__.to_json(message)
    if len(data) > max_bytes:
        tag = getattr(message, "type", type(message).__name__)
        raise EventTooLargeError(
            "",
            f"encoded {tag} is {len(data)} bytes, over the limit of {max_bytes} bytes; "
            f"shrink its input, output or metadata, or raise {_LIMIT_SETTING}",
        )
    return data


# --- decoding -------------------------------------------------------------------------------


def decode_event(data: bytes | None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Event:
    """The event in `data`; InvalidEventError (or EventTooLargeError) naming what is wrong."""
    return _decode(_EVENTS, data, max_bytes)


def decode_signal(data: bytes | None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Signal:
    """A signal only: a wait or trigger registration is refused as an unknown type."""
    return _decode(_SIGNALS, data, max_bytes)


def decode_signals_message(
    data: bytes | None, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> SignalsMessage:
    """Any message of the signals topic: a signal, wait.registered, wait.ended or
    trigger.registered (what the signals agent reads)."""
    return _decode(_SIGNALS_MESSAGES, data, max_bytes)


def decode_command(data: bytes | None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Command:
    return _decode(_COMMANDS, data, max_bytes)


def decode_dead_letter(data: bytes | None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> DeadLetter:
    return _decode(_DEAD_LETTERS, data, max_bytes)


def decode_flow(data: bytes | None, *, max_bytes: int = DEFAULT_MAX_BYTES) -> FlowDefinition:
    """A flow definition from the flows topic, with decode_event's rules; a workflow
    definition is refused as an unknown type (read the topic with decode_flows_message)."""
    return _decode(_FLOWS, data, max_bytes)


def decode_flows_message(
    data: bytes | None, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> FlowsMessage:
    """Any message of the flows topic: a flow or a workflow definition."""
    return _decode(_FLOWS_MESSAGES, data, max_bytes)


def decode_flow_message(
    data: bytes | None, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> FlowMessage:
    """Any message of the flow-control topic (what the flow consumer reads)."""
    return _decode(_FLOW_MESSAGES, data, max_bytes)


def validate_event(mapping: Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Event:
    """The event in a Python mapping (e.g. a parsed HTTP body), with decode_event's rules.

    The mapping goes through JSON on purpose: a parsed JSON body then means exactly what the
    same bytes on the topic would (ISO strings are timestamps, "2" is not an attempt), and
    Python values (datetimes, enum members, models) are written the way `encode` writes them.
    """
    return _decode(_EVENTS, _mapping_to_json(mapping), max_bytes)


def validate_signal(mapping: Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Signal:
    return _decode(_SIGNALS, _mapping_to_json(mapping), max_bytes)


def validate_signals_message(
    mapping: Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> SignalsMessage:
    return _decode(_SIGNALS_MESSAGES, _mapping_to_json(mapping), max_bytes)


def validate_command(
    mapping: Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> Command:
    return _decode(_COMMANDS, _mapping_to_json(mapping), max_bytes)


def validate_flows_message(
    mapping: Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_BYTES
) -> FlowsMessage:
    return _decode(_FLOWS_MESSAGES, _mapping_to_json(mapping), max_bytes)


def _mapping_to_json(mapping: Mapping[str, Any]) -> bytes:
    if not isinstance(mapping, Mapping):
        raise InvalidEventError("", f"expected a mapping, got {type(mapping).__name__}")
    try:
        # NaN and infinities written as the JSON extensions `NaN` / `Infinity` that the
        # validator reads back and then refuses by field: the default would write null, and
        # 1e400 in an HTTP body would be accepted as a null output.
        return to_json(dict(mapping), inf_nan_mode="constants")
    except PydanticSerializationError as exc:
        raise InvalidEventError("", f"not JSON-serializable: {exc}") from None


def _decode(kind: _MessageKind[MessageT], data: bytes | None, max_bytes: int) -> MessageT:
    if data is None:
        # A record with a null value (a tombstone, as compaction tools write them) is read from
        # the topics like any other: it must be refused with a reason, never crash a reader.
        raise InvalidEventError("", f"a tombstone (a record with a null value) holds no {kind.noun}")
    # Size first, from len() alone: parsing a 50 MB value only to refuse it is the cost the
    # limit is there to avoid.
    if len(data) > max_bytes:
        raise EventTooLargeError(
            "",
            f"{kind.noun} is {len(data)} bytes, over the limit of {max_bytes} bytes "
            f"(set by {_LIMIT_SETTING})",
        )
    try:
        return kind.adapter.validate_json(data)
    except ValidationError as exc:
        # `from None`: the InvalidEventError already says everything pydantic's report did.
        raise _diagnose(kind, data, exc) from None


# --- diagnosis (only for invalid input) -----------------------------------------------------


def _diagnose(kind: _MessageKind[Any], data: bytes, exc: ValidationError) -> InvalidEventError:
    """One error for an invalid message, checking in the order a reader would fix things:
    bytes, JSON, object, type, schema_version, then the first field pydantic complained about.
    """
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        return _undecodable(data, errors[0])
    try:
        document = from_json(data)
    except ValueError as bad:  # valid to the validator's parser, too deep for this one
        return InvalidEventError("", f"not JSON: {bad}")
    problem = _envelope_problem(kind, document)
    if problem is not None:
        return problem
    return _field_problem(kind, errors[0])


def _undecodable(data: bytes, error: ErrorDetails) -> InvalidEventError:
    where = error.get("ctx", {}).get("error", error["msg"])
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        byte = data[bad.start : bad.start + 1].hex()
        return InvalidEventError(
            "", f"not UTF-8: byte 0x{byte} at offset {bad.start} ({bad.reason}); JSON: {where}"
        )
    return InvalidEventError("", f"not JSON: {where}")


def _envelope_problem(kind: _MessageKind[Any], document: Any) -> InvalidEventError | None:
    if not isinstance(document, dict):
        return InvalidEventError(
            "", f"expected a JSON object ({kind.noun}), got {json_kind(document)}"
        )
    known = ", ".join(kind.models)
    if "type" not in document:
        return InvalidEventError("type", f"missing; expected one of {known}")
    if not isinstance(document["type"], str) or document["type"] not in kind.models:
        return InvalidEventError(
            "type", f"unknown {kind.noun} type {_shown(document['type'])}; expected one of {known}"
        )
    # Before any other field: a message of another major version may fail on many fields, and
    # only this one says why. A missing version reads as 1 (the first version).
    version = document.get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or version != SCHEMA_VERSION:
        problem = (
            f"unsupported version {_shown(version)}; this build reads version {SCHEMA_VERSION}"
        )
        if type(version) is int and version > SCHEMA_VERSION:
            # The roll order was broken (COMPATIBILITY.md): a writer of the next major reached a
            # reader that is not upgraded yet. Say what to do, not only what is wrong.
            problem += " (a newer major: upgrade this reader, see schemas/COMPATIBILITY.md)"
        return InvalidEventError("schema_version", problem)
    return None


def _field_problem(kind: _MessageKind[Any], error: ErrorDetails) -> InvalidEventError:
    """The InvalidEventError for one pydantic error: the one place errors are worded."""
    location = list(error["loc"])
    if kind.tagged and location and location[0] in kind.models:
        location = location[1:]
    field = ".".join(str(part) for part in location)
    match error["type"]:
        case "missing":
            problem = "required field is missing"
        case "value_error":
            # A model's own check (FlowDefinition's graph, RetryPolicy's delays) starts its
            # message with the path of the field it is about, relative to the model:
            # "edges[1].target: 'x' is not one of the flow's steps". A field's own check
            # (SleepKind, ReportableStepStatus) says what was expected, and the value is added.
            message = str(error.get("ctx", {}).get("error", error["msg"]))
            path, separator, rest = message.partition(": ")
            if separator and " " not in path:
                field, problem = ".".join(part for part in (field, path) if part), rest
            elif field and not isinstance(error["input"], dict):
                problem = f"{message}, got {_shown(error['input'])}"
            else:
                problem = message
        case "string_pattern_mismatch" if control_character_problem(error["input"]):
            # The identifier patterns of `limits` exist to keep control characters out; say
            # which one, and where, rather than quoting the regex.
            problem = f"{control_character_problem(error['input'])}, got {_shown(error['input'])}"
        case "timezone_aware":
            problem = (
                f"timestamp has no UTC offset, got {_shown(error['input'])}; "
                "add one, e.g. 'Z' or '+00:00'"
            )
        case _:
            problem = f"{error['msg']}, got {_shown(error['input'])}"
    return InvalidEventError(field, problem)


def _shown(value: Any) -> str:
    text = repr(value)
    if len(text) > _VALUE_REPR_CHARS:
        text = text[: _VALUE_REPR_CHARS - 3] + "..."
    return text


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, as an error message names it ("an array", "null", ...)."""
    match value:
        case dict():
            return "an object"
        case list():
            return "an array"
        case str():
            return "a string"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case None:
            return "null"
        case _:
            return type(value).__name__
