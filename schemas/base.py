"""The building blocks every wire model shares: the strict base class and the field types.

Wire models are what crosses a topic. They are strict on purpose: a producer in another language
that writes `"attempt": "2"` has a bug, and coercing it here would hide the bug until a reader
that is not Python trips on it. Strict about the fields a reader knows, and blind to those it
does not: a field added in a later minor version is ignored (COMPATIBILITY.md, in this folder).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, get_args, get_origin
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

# The field types live with their limits (`limits`); they are re-exported here, where every
# model module (and the layers above) has always found them.
from .limits import (
    ErrorMessage,
    ErrorStack,
    ErrorType,
    MatchPath,
    MessageId,
    Metadata,
    MetadataValue,
    Name,
    Timestamp,
)

__all__ = [
    "SCHEMA_VERSION",
    "ErrorInfo",
    "MatchPath",
    "MessageId",
    "Metadata",
    "MetadataValue",
    "Name",
    "SchemaVersion",
    "Timestamp",
    "TriggerInfo",
    "WireModel",
    "models_by_type",
    "new_event_id",
]

SCHEMA_VERSION: Final = 1
"""The major version of the wire format this build writes and reads; a message of another
major is refused with the reason (COMPATIBILITY.md). Minor versions are not numbered here: a
minor only adds what readers may ignore."""

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
    """Base of every model that crosses a topic: unknown fields ignored, immutable, no coercion,
    no NaN or Infinity in a float field (JSON has neither; see `limits`).

    Unknown fields are ignored (not kept) so that a writer of a later minor version can add an
    optional field before or after its readers are upgraded (COMPATIBILITY.md). A reader that
    passes a message on re-encodes only the fields it knows; the log keeps the original bytes.

    Strict mode still reads ISO 8601 strings into datetimes when decoding JSON (JSON has no
    datetime type); in Python, datetimes must be datetime objects and enums enum members.
    """

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
        json_schema_extra=_require_tag_fields,
    )


def new_event_id() -> str:
    """A fresh, unique event id (uuid4, 32 hex digits): consumers de-duplicate on it."""
    return uuid4().hex


SchemaVersion = Literal[1]


class ErrorInfo(WireModel):
    """What went wrong in a step or run."""

    type: ErrorType = Field(description="Exception class name, e.g. 'TimeoutError'.")
    message: ErrorMessage
    stack: ErrorStack | None = Field(
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
