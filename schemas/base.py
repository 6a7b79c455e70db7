"""The building blocks every wire model shares: the strict base class and the field types.

Wire models are what crosses a topic. They are strict on purpose: a producer in another language
that writes `"attempt": "2"` has a bug, and coercing it here would hide the bug until a reader
that is not Python trips on it.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, get_args, get_origin
from uuid import uuid4

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetPydanticSchema,
)
from pydantic.config import JsonDict
from pydantic_core import core_schema

SCHEMA_VERSION: Final = 1
"""The wire format version this build writes and reads."""

_ALWAYS_WRITTEN = ("type", "schema_version")


def _require_tag_fields(schema: JsonDict, model: type[Any]) -> None:
    # `type` and `schema_version` have defaults only so that Python code need not repeat them
    # when it builds a model; on the wire every message carries both, so the published schema
    # marks them required for the SDKs of other languages.
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return
    required = schema.get("required")
    required_list = list(required) if isinstance(required, list) else []
    for name in reversed(_ALWAYS_WRITTEN):
        if name in properties and name not in required_list:
            required_list.insert(0, name)
    if required_list:
        schema["required"] = required_list


class WireModel(BaseModel):
    """Base of every model that crosses a topic: unknown fields refused, immutable, no coercion.

    Strict mode still reads ISO 8601 strings into datetimes when decoding JSON (JSON has no
    datetime type); in Python, datetimes must be datetime objects and enums enum members.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        json_schema_extra=_require_tag_fields,
    )


def new_event_id() -> str:
    """A fresh, unique event id (uuid4, 32 hex digits): consumers de-duplicate on it."""
    return uuid4().hex


MessageId = Annotated[str, Field(min_length=1, max_length=128)]
"""An event or command id; unique, so re-deliveries can be dropped."""

Name = Annotated[str, Field(min_length=1, max_length=200)]
"""Project, flow, run id, step key, event name: short identifiers that end up in table keys."""

MatchPath = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=r"^[^.]+(\.[^.]+)*$",
        description="Dotted path into the signal as a JSON object, e.g. 'data.order_id'; "
        "a segment of digits indexes an array.",
    ),
]
"""Where a wait's match value is read: the same path in the run's trigger event (by the worker,
giving `match_value`) and in each signal of the name (by the signals agent); see
`signals.resolve_match_path`."""

Timestamp = AwareDatetime
"""A point in time with its UTC offset; naive datetimes are refused (whose clock would they be?)."""

SchemaVersion = Literal[1]


def _metadata_value_schema(source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
    # One union with one error message: a plain `str | int | float | bool` union reports one
    # error per member ("should be a valid string", "... integer", ...), each under a location
    # suffixed with the member's name, which is noise to whoever reads the dead letter.
    scalars = core_schema.union_schema(
        [
            core_schema.str_schema(),
            core_schema.int_schema(),
            core_schema.float_schema(),
            core_schema.bool_schema(),
        ],
        custom_error_type="metadata_value",
        custom_error_message="Input should be a string, number, boolean or null",
    )
    return core_schema.nullable_schema(scalars)


MetadataValue = Annotated[
    str | int | float | bool | None, GetPydanticSchema(_metadata_value_schema)
]
"""Metadata holds flat diagnostic values (ids, counts, status codes), never nested documents."""

Metadata = dict[str, MetadataValue]


class ErrorInfo(WireModel):
    """What went wrong in a step or run."""

    type: str = Field(description="Exception class name, e.g. 'TimeoutError'.")
    message: str
    stack: str | None = Field(
        None, description="Formatted stack trace; only when the client captures stacks."
    )


class TriggerInfo(WireModel):
    """The signal that started a run."""

    name: Name = Field(description="The signal's name, e.g. 'order.created'.")
    event_id: MessageId = Field(description="The signal's event_id.")


def models_by_type(message_type: Any) -> dict[str, type[WireModel]]:
    """Each `type` tag of a wire model, or of a (discriminated) union of them, and its class.

    Derived from the models so that the lists of known types in error messages, the codec and
    the exported examples cannot drift from the classes themselves.
    """
    if get_origin(message_type) is Annotated:
        message_type = get_args(message_type)[0]
    members = get_args(message_type) or (message_type,)
    models: dict[str, type[WireModel]] = {}
    for member in members:
        if not (isinstance(member, type) and issubclass(member, WireModel)):
            raise TypeError(f"{member!r} is not a wire model")
        tag = member.model_fields["type"].default
        if not isinstance(tag, str):
            raise TypeError(f"{member.__name__}.type has no default tag")
        models[tag] = member
    return models
