"""Cron schedules of workflows: what a schedule is on the wire, and when its ticks fall.

A workflow declared with `cron=` carries a `CronSchedule` in its definition
(`WorkflowDefinition.schedule`). Each tick becomes a run scheduled to start at the tick
(processors/fold/schedules.py keeps the chain going); this module only says which instants the
ticks are, purely.

**Wall clock and daylight saving.** Cron fields are read on the wall clock of `timezone`.
croniter walks *naive* wall-clock times (given zone-aware datetimes, croniter 5 gets the days of
a change wrong: "0 8 * * *" gave 07:00 on a spring-forward day), and each wall time is turned
into an instant here (croniter is imported when a schedule is used: a service that only sends
events never pays for it):

- a wall time that does not exist (the clock jumps from 02:00 to 03:00 in spring) fires at the
  first minute after the jump: a 02:30 tick fires at 03:00, once, and "*/30 * * * *" fires once
  at 03:00 for its 02:00, 02:30 and 03:00 ticks;
- a wall time that happens twice (the clock goes back from 03:00 to 02:00 in autumn) fires at
  its first occurrence only (summer time), once.

The mapping never goes backwards in time, so "the first tick after t" is the first wall time
after t's whose instant is after t.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from .base import WireModel
from .ids import derived_id
from .limits import DelayMs

__all__ = ["CronSchedule", "MissedTicks", "cron_tick_run_id"]

MissedTicks = Literal["run_latest", "run_all", "skip"]
"""What becomes of ticks that fell while the processors were down (or behind), once they run
again: run the latest of them only, run every one in order, or run none."""

_CRON_FIELDS: Final = 5
_CRON_FIELDS_WITH_SECONDS: Final = 6
_ONE_MINUTE: Final = timedelta(minutes=1)
_GAP_MAX_MINUTES: Final = 24 * 60
"""No zone's clock has ever jumped a whole day forward but once (Samoa, 2011): a bound, not a
guess at a real gap."""


class CronSchedule(WireModel):
    """When a workflow starts by itself: a cron expression on a zone's wall clock."""

    cron: str = Field(
        description="Five fields: minute hour day-of-month month day-of-week, e.g. '0 8 * * *'; "
        "or six, with seconds first (as Quartz and Temporal read them), e.g. '*/10 * * * * *'."
    )
    timezone: str = Field("UTC", description="The IANA zone whose wall clock the fields read.")
    missed: MissedTicks = Field(
        "run_latest",
        description="Ticks missed during an outage: run the latest only, all of them, or none.",
    )
    expires_after_ms: DelayMs | None = Field(
        None,
        description="A tick that has not started this long after its time ends `expired` "
        "instead of running late; null: it runs however late.",
    )

    @field_validator("cron")
    @classmethod
    def _cron_is_valid(cls, cron: str) -> str:
        fields = cron.split()
        if len(fields) not in (_CRON_FIELDS, _CRON_FIELDS_WITH_SECONDS):
            raise ValueError(
                f"{cron!r} has {len(fields)} fields; expected {_CRON_FIELDS} "
                "(minute hour day-of-month month day-of-week), e.g. '0 8 * * *', or "
                f"{_CRON_FIELDS_WITH_SECONDS} with seconds first"
            )
        from croniter import CroniterBadDateError, croniter

        seconds = len(fields) == _CRON_FIELDS_WITH_SECONDS
        if not croniter.is_valid(cron, second_at_beginning=seconds):
            raise ValueError(f"{cron!r} is not a valid cron expression")
        try:
            croniter(cron, datetime(2000, 1, 1), second_at_beginning=seconds).get_next(datetime)
        except CroniterBadDateError:
            raise ValueError(f"{cron!r} never fires (a date no month has?)") from None
        return cron

    @field_validator("timezone")
    @classmethod
    def _timezone_is_known(cls, timezone: str) -> str:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{timezone!r} is not a known IANA time zone; expected e.g. 'Europe/Paris' "
                "or 'UTC'"
            ) from None
        return timezone

    def next_tick(self, after: datetime) -> datetime:
        """The first tick strictly after `after` (an aware datetime), in UTC."""
        from croniter import croniter

        zone = ZoneInfo(self.timezone)
        after = after.astimezone(UTC)
        # Every wall time up to `after`'s own maps to `after` or earlier (module docstring).
        wall = after.astimezone(zone).replace(tzinfo=None)
        seconds = len(self.cron.split()) == _CRON_FIELDS_WITH_SECONDS
        walls = croniter(self.cron, wall, second_at_beginning=seconds)
        while True:
            wall_tick: datetime = walls.get_next(datetime)
            tick = _instant(wall_tick, zone)
            if tick > after:
                return tick

    def latest_tick(self, first: datetime, now: datetime) -> datetime:
        """The last tick at or before `now`, counting from tick `first` (itself at or before
        `now`): where `run_latest` resumes after an outage."""
        latest = first
        while (following := self.next_tick(latest)) <= now:
            latest = following
        return latest


def cron_tick_run_id(project: str, app: str, workflow: str, tick: datetime) -> str:
    """The run id of a workflow's tick: the same on every processors process and after every
    restart, so a tick written twice is one run."""
    return derived_id("cron", project, app, workflow, tick.astimezone(UTC).isoformat())


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant of naive wall time `wall` in `zone` (module docstring: gaps and folds)."""
    for _ in range(_GAP_MAX_MINUTES + 1):
        local = wall.replace(tzinfo=zone)  # fold=0: the first occurrence of a repeated time
        instant = local.astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == wall:
            return instant
        # In a gap: the first whole minute that exists after it.
        wall = wall.replace(second=0, microsecond=0) + _ONE_MINUTE
    raise ValueError(f"{wall} never exists in {zone.key}")
