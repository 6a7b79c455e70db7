"""When is the processors' lag "growing for longer than the bound"? (steplog/server/lag_trend.py)"""

from __future__ import annotations

from steplog.server.lag_trend import LagTrend


def trend(*samples: tuple[float, int], bound: float = 10) -> LagTrend:
    judged = LagTrend(bound)
    for at, lag in samples:
        judged.add(at, lag)
    return judged


def test_a_lag_rising_without_reaching_0_over_the_whole_window_is_growing() -> None:
    verdict = trend((0, 5), (5, 40), (10, 90)).verdict()
    assert verdict.growing
    assert "grew from 5 to 90" in verdict.detail


def test_a_rise_watched_for_less_than_the_window_is_not_judged_yet() -> None:
    assert not trend((0, 5), (5, 40), (9, 90)).verdict().growing


def test_a_lag_that_reached_0_within_the_window_is_healthy() -> None:
    assert not trend((0, 5), (4, 0), (10, 90)).verdict().growing


def test_a_backlog_shrinking_as_it_is_consumed_is_healthy() -> None:
    assert not trend((0, 900), (5, 600), (10, 300)).verdict().growing


def test_a_lag_stuck_at_the_same_height_has_not_grown() -> None:
    assert not trend((0, 7), (5, 7), (10, 7)).verdict().growing


def test_the_window_slides_old_zeros_and_old_heights_are_forgotten() -> None:
    judged = trend((0, 0), (5, 50), (10, 10), (15, 20), (20, 30), (25, 40))
    # Window [15, 25]: baseline 20 at 15, never 0 since, now 40.
    assert judged.verdict().growing
    assert judged.samples[0] == (15, 20)


def test_no_samples_is_no_verdict() -> None:
    assert not LagTrend(10).verdict().growing
