"""How replay deals the events topic's partitions to its fold processes."""

from __future__ import annotations

from steplog.server.replay_fold import shares


def test_partitions_are_dealt_round_robin_into_at_most_the_processes_asked() -> None:
    assert shares([5, 0, 3, 1, 4, 2], 2) == [(0, 2, 4), (1, 3, 5)]
    assert shares(range(6), 4) == [(0, 4), (1, 5), (2,), (3,)]


def test_no_share_is_empty_and_there_is_always_one() -> None:
    assert shares([0, 1], 8) == [(0,), (1,)]
    assert shares([7], 1) == [(7,)]
    assert shares([], 3) == [()]
