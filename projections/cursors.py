"""Keyset cursors of the paged reads (the run list, the dead letters): the last row's sort key,
handed to the client as opaque text and read back as the next page's lower bound.

The text is the key's values as a JSON array (a datetime as its ISO 8601 form, with its
offset), in url-safe base64 without padding: it goes in a query string as it is. Nothing is
signed: a forged cursor only chooses where a page starts, which `?cursor=` is for anyway.
What is checked is the shape, so a cursor that is not one the read handed out (truncated,
edited, another read's) is a `CursorError` naming what is wrong, never a query error.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any, TypeVar, overload

from steplog.errors import SteplogError

__all__ = ["CursorError", "CursorValue", "decode_cursor", "encode_cursor"]

CursorValue = datetime | str | int
"""What a sort key holds: times (aware), text and integers (offsets, partitions)."""

A = TypeVar("A", bound=CursorValue)
B = TypeVar("B", bound=CursorValue)
C = TypeVar("C", bound=CursorValue)


class CursorError(SteplogError):
    """A cursor that is not one the read handed out."""


def encode_cursor(values: tuple[CursorValue, ...]) -> str:
    """The cursor text of a sort key (an aware datetime keeps its instant exactly, to the
    microsecond)."""
    for value in values:
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError(f"cursor value {value!r}: a datetime must be aware (UTC)")
    document = [value.isoformat() if isinstance(value, datetime) else value for value in values]
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode("ascii")


@overload
def decode_cursor(text: str, first: type[A], second: type[B], /) -> tuple[A, B]: ...


@overload
def decode_cursor(
    text: str, first: type[A], second: type[B], third: type[C], /
) -> tuple[A, B, C]: ...


def decode_cursor(text: str, *kinds: type[Any]) -> tuple[CursorValue, ...]:
    """The sort key in `text`, whose values must be of `kinds` in order (datetime, str, int);
    CursorError if it is not such a cursor."""
    try:
        padded = text + "=" * (-len(text) % 4)
        document = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (UnicodeError, binascii.Error, ValueError) as exc:
        raise _error(text, f"not a cursor's encoding ({exc})") from exc
    if not isinstance(document, list) or len(document) != len(kinds):
        raise _error(text, f"expected a key of {len(kinds)} values, found {document!r}")
    return tuple(_value(text, index, kind, value)
                 for index, (kind, value) in enumerate(zip(kinds, document, strict=True)))


def _value(text: str, index: int, kind: type[Any], value: object) -> CursorValue:
    if kind is datetime and isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    elif kind is str and isinstance(value, str):
        return value
    # bool is an int to Python, not to JSON: a cursor never holds one.
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _error(text, f"value {index} is {value!r}, expected {kind.__name__}")


def _error(text: str, problem: str) -> CursorError:
    shown = text if len(text) <= 60 else text[:60] + "..."
    return CursorError(f"cursor {shown!r} is not one this list handed out: {problem}")
