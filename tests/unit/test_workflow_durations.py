"""Durations and points in time as workflow code writes them (steplog.durations)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from steplog.errors import InvalidDurationError
from steplog.durations import duration_ms, instant


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("250ms", 250),
        ("10s", 10_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("2d", 172_800_000),
        ("1h30m", 5_400_000),
        ("1.5s", 1_500),
        (" 10 S ", 10_000),
        (1500, 1500),
        (0, 0),
        (2.4, 2),
        (timedelta(seconds=2), 2000),
    ],
)
def test_durations_read_as_milliseconds(value: object, expected: int) -> None:
    assert duration_ms(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["", "10", "ten seconds", "5 minutes", "1h-3m", True, None, [1]])
def test_a_value_that_is_not_a_duration_is_refused_with_what_was_expected(value: object) -> None:
    with pytest.raises(InvalidDurationError, match=r"duration: .*expected") as caught:
        duration_ms(value)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)


def test_a_negative_duration_is_refused() -> None:
    with pytest.raises(InvalidDurationError, match="negative"):
        duration_ms(-5)
    with pytest.raises(InvalidDurationError, match="timeout: "):
        duration_ms(float("nan"), field="timeout")


def test_points_in_time_are_read_from_datetimes_iso_strings_and_epoch_milliseconds() -> None:
    moment = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    assert instant(moment) == moment
    assert instant(moment.astimezone(timezone(timedelta(hours=2)))) == moment
    assert instant("2026-03-01T09:00:00Z") == moment
    assert instant("2026-03-01T10:00:00+01:00") == moment
    assert instant(int(moment.timestamp() * 1000)) == moment
    assert instant(moment).tzinfo is UTC


@pytest.mark.parametrize(
    "value", [datetime(2026, 3, 1, 9, 0), "2026-03-01T09:00:00", "next tuesday", True, None]
)
def test_a_time_without_an_offset_or_not_a_time_is_refused(value: object) -> None:
    with pytest.raises(InvalidDurationError, match="until: "):
        instant(value)  # type: ignore[arg-type]
