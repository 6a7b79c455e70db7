"""Keyset cursors (projections/cursors.py): opaque url-safe text that reads back to the same sort
key, and anything else is a CursorError naming what is wrong."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone

import pytest

from steplog.errors import SteplogError
from steplog.projections.cursors import CursorError, decode_cursor, encode_cursor

TS = datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)


def test_a_cursor_reads_back_to_its_key_to_the_microsecond() -> None:
    assert decode_cursor(encode_cursor((TS, 2, 2**63 - 1)), datetime, int, int) == (
        TS, 2, 2**63 - 1
    )
    assert decode_cursor(encode_cursor((TS, "run/ü?&=+ 1")), datetime, str) == (
        TS, "run/ü?&=+ 1"
    )


def test_a_cursor_is_url_safe_text() -> None:
    text = encode_cursor((TS, "?" * 50 + "~" * 50))
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_an_offset_keeps_its_instant() -> None:
    plus_five = TS.astimezone(timezone(timedelta(hours=5)))
    (decoded, _) = decode_cursor(encode_cursor((plus_five, "r")), datetime, str)
    assert decoded == TS


def test_a_naive_datetime_is_not_encoded() -> None:
    with pytest.raises(ValueError, match="aware"):
        encode_cursor((datetime(2026, 1, 1), "r"))


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(("text", "problem"), [
    ("", "not a cursor's encoding"),
    ("%%%", "not a cursor's encoding"),
    ("abcde", "not a cursor's encoding"),
    ("ü", "not a cursor's encoding"),
    (b64("not json"), "not a cursor's encoding"),
    (b64('{"ts": 1}'), "expected a key of 3 values"),
    (b64('["2026-03-01T12:30:05+00:00", 1]'), "expected a key of 3 values"),
    (b64('["2026-03-01T12:30:05+00:00", "run", 1]'), "value 1 is 'run', expected int"),
    (b64('["2026-03-01T12:30:05", 1, 2]'), "value 0 is '2026-03-01T12:30:05', expected datetime"),
    (b64('["yesterday", 1, 2]'), "value 0 is 'yesterday', expected datetime"),
    (b64('[17, 1, 2]'), "value 0 is 17, expected datetime"),
    (b64('["2026-03-01T12:30:05+00:00", true, 2]'), "value 1 is True, expected int"),
    (b64('["2026-03-01T12:30:05+00:00", 1, 2.5]'), "value 2 is 2.5, expected int"),
])
def test_anything_else_is_a_cursor_error_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(CursorError, match="is not one this list handed out") as raised:
        decode_cursor(text, datetime, int, int)
    assert problem in str(raised.value)
    assert isinstance(raised.value, SteplogError)


def test_another_lists_cursor_is_refused() -> None:
    with pytest.raises(CursorError, match="value 1 is 'run-1', expected int"):
        decode_cursor(encode_cursor((TS, "run-1", 3)), datetime, int, int)
    with pytest.raises(CursorError, match="expected a key of 2 values"):
        decode_cursor(encode_cursor((TS, 1, 3)), datetime, str)


def test_a_long_cursor_is_shortened_in_the_message() -> None:
    with pytest.raises(CursorError) as raised:
        decode_cursor("x" * 5000, datetime, str)
    assert len(str(raised.value)) < 300
