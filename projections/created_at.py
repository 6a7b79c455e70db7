"""A run's `created_at` where nothing recorded it: the earliest time its run row knows.

Since state format 4 the fold records the time of a run's first event (processors/fold/run.py).
Two things predate that and must read a stand-in: a state stored in an older format (the fold
reads it with `earliest_known`) and a `runs` row written before migration 4 (the column's
DEFAULT, `EARLIEST_KNOWN_SQL`, which also backfills `run_list`). The stand-in is one formula
over three values of the run row, never over anything only the state knows (such as the time of
the run.scheduled event), so that for a run in flight across the upgrade the `run_list` row
backfilled from its old `runs` row and the row the fold writes next carry the same created_at:
created_at is in `run_list`'s sorting key, and two values would leave the run listed twice.

The earliest of: when it was due (`scheduled_for`; later than its creation for a run scheduled
ahead, hence the minimum), when it began (`started_at`: the first run.started, else the first
step event), and the newest event folded (`updated_at`, never null: a run scheduled ahead that
has not begun).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

__all__ = ["EARLIEST_KNOWN_SQL", "earliest_known"]


def earliest_known(
    scheduled_for: datetime | None, started_at: datetime | None, updated_at: datetime
) -> datetime:
    """The stand-in created_at of a run row with these values (module docstring)."""
    earliest = updated_at
    if scheduled_for is not None and scheduled_for < earliest:
        earliest = scheduled_for
    if started_at is not None and started_at < earliest:
        earliest = started_at
    return earliest


EARLIEST_KNOWN_SQL: Final = (
    "least(ifNull(scheduled_for, updated_at), ifNull(started_at, updated_at), updated_at)"
)
"""`earliest_known` over a `runs` row's columns, in ClickHouse SQL."""
