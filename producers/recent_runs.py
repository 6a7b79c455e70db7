"""Bounded memories of recent runs (their start, where they were written, their cancel):
what a worker keeps so that a run's next command need not search or read the log."""

from __future__ import annotations

from collections import OrderedDict
from typing import Final, TypeVar

__all__ = ["REMEMBERED_CANCELS", "REMEMBERED_RUNS", "remember"]

REMEMBERED_RUNS: Final = 20_000
"""Runs whose start (input, trigger), fast start and newest write are kept, so that their
next resume need not search or read the log."""
REMEMBERED_CANCELS: Final = 100_000

V = TypeVar("V")


def remember(memory: OrderedDict[str, V], key: str, value: V, limit: int) -> None:
    """Keep `value` for `key` as the newest entry; forget the oldest beyond `limit`."""
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > limit:
        memory.popitem(last=False)
