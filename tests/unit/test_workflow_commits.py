"""Where a worker may commit its commands partition (producers.command_commits)."""

from __future__ import annotations

from steplog.producers.command_commits import PartitionOffsets as _PartitionOffsets


def test_the_commit_point_waits_for_every_earlier_command() -> None:
    offsets = _PartitionOffsets()
    for offset in (5, 6, 7):
        offsets.add(offset)
    assert offsets.finish(6) is None  # 5 is still in flight: nothing may be committed
    assert offsets.finish(5) == 7  # 5 and 6 done: the next to read is 7
    assert offsets.finish(7) == 8


def test_a_command_finished_twice_or_unknown_moves_nothing() -> None:
    offsets = _PartitionOffsets()
    offsets.add(1)
    assert offsets.finish(1) == 2
    assert offsets.finish(1) is None
    assert offsets.finish(99) is None
