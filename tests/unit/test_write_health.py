"""What the health endpoint reads of the projection writes (processors/write_health.py)."""

from __future__ import annotations

from steplog.processors.write_health import WriteHealth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failing_for_counts_from_the_first_failure_until_a_success() -> None:
    clock = Clock()
    health = WriteHealth(clock)
    assert health.failing_for() == 0.0
    health.failed(ConnectionError("engine away"))
    clock.now += 5
    health.failed("still away")
    assert (health.failing_for(), health.failures, health.last_error) == (5.0, 2, "still away")
    health.succeeded(refused_rows=3)
    assert (health.failing_for(), health.failures, health.refused_rows) == (0.0, 0, 3)


def test_under_way_for_is_the_oldest_write_still_running() -> None:
    clock = Clock()
    health = WriteHealth(clock)
    first = health.began()
    clock.now += 2
    second = health.began()
    clock.now += 3
    assert health.under_way_for() == 5.0
    health.ended(first)
    assert health.under_way_for() == 3.0
    health.ended(second)
    assert health.under_way_for() == 0.0
