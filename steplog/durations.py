"""Durations and points in time as workflow code writes them.

    duration_ms("250ms") == 250          duration_ms("1h30m") == 5_400_000
    duration_ms(1500) == 1500            duration_ms(timedelta(seconds=2)) == 2000
    instant("2026-03-01T00:00:00Z")      instant(1767225600000)   instant(aware_datetime)

A bare number is milliseconds (seed 004: "a number of milliseconds"). Units: ms, s, m, h, d;
parts add up ("1h30m"). Naive datetimes and ISO strings without an offset are refused: whose
clock would they be? Every error names the argument, the value and what was expected.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Final

from steplog.errors import InvalidDurationError

__all__ = ["Duration", "Instant", "duration_ms", "instant"]

Duration = str | int | float | timedelta
"""What a sleep or a timeout accepts: "10s", "5m", "1h", "250ms", "1h30m", ms as a number."""
Instant = datetime | str | int | float
"""What sleep_until accepts: an aware datetime, an ISO 8601 string with offset, epoch ms."""

_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", re.IGNORECASE)
_WHOLE: Final = re.compile(r"\s*(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*)+", re.IGNORECASE)
_EXPECTED_DURATION: Final = (
    'expected a number of milliseconds or a string such as "250ms", "10s", "5m", "1h", "2d" '
    'or "1h30m"'
)


def duration_ms(value: Duration, *, field: str = "duration") -> int:
    """Milliseconds in `value` (rounded to the nearest), never negative."""
    if isinstance(value, bool):  # bool is an int to Python, never a duration to a reader
        raise InvalidDurationError(f"{field}: {value!r} is a boolean; {_EXPECTED_DURATION}")
    if isinstance(value, timedelta):
        ms = value.total_seconds() * 1000
    elif isinstance(value, (int, float)):
        ms = float(value)
    elif isinstance(value, str):
        if not _WHOLE.fullmatch(value):
            raise InvalidDurationError(
                f"{field}: {value!r} is not a duration; {_EXPECTED_DURATION}"
            )
        ms = sum(float(number) * _UNIT_MS[unit.lower()] for number, unit in _PART.findall(value))
    else:
        raise InvalidDurationError(
            f"{field}: a {type(value).__name__} is not a duration; {_EXPECTED_DURATION}"
        )
    if math.isnan(ms) or math.isinf(ms):
        raise InvalidDurationError(f"{field}: {value!r} is not a finite duration")
    if ms < 0:
        raise InvalidDurationError(f"{field}: {value!r} is negative; expected 0 or more")
    return round(ms)


def instant(value: Instant, *, field: str = "until") -> datetime:
    """`value` as an aware datetime in UTC."""
    if isinstance(value, bool):
        raise InvalidDurationError(f"{field}: {value!r} is a boolean, not a point in time")
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, (int, float)):
        if math.isnan(value) or math.isinf(value):
            raise InvalidDurationError(f"{field}: {value!r} is not a finite epoch time")
        try:
            moment = datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidDurationError(
                f"{field}: {value!r} is out of range for epoch milliseconds"
            ) from None
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidDurationError(
                f"{field}: {value!r} is not an ISO 8601 time; expected e.g. "
                "'2026-03-01T09:00:00Z' or '2026-03-01T10:00:00+01:00'"
            ) from None
    else:
        raise InvalidDurationError(
            f"{field}: a {type(value).__name__} is not a point in time; expected an aware "
            "datetime, an ISO 8601 string with a UTC offset, or epoch milliseconds"
        )
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidDurationError(
            f"{field}: {value!r} has no UTC offset; add one (e.g. 'Z', '+00:00', or "
            "datetime.now(UTC)): a time without one means a different instant on every machine"
        )
    return moment.astimezone(UTC)
