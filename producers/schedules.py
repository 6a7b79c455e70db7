"""A workflow's cron schedule as `@app.workflow(cron=...)` declares it (`cron_schedule`)."""

from __future__ import annotations

from pydantic import ValidationError

from steplog.durations import Duration, duration_ms
from steplog.errors import WorkflowError
from steplog.schemas.schedules import CronSchedule, MissedTicks

__all__ = ["cron_schedule"]


def cron_schedule(
    workflow: str,
    cron: str | None,
    timezone: str | None,
    missed: MissedTicks | None,
    expires_after: Duration | None,
) -> CronSchedule | None:
    """The schedule of workflow `workflow`, or None without `cron`; WorkflowError names what
    is wrong (a bad expression or zone, an option of a schedule given without one)."""
    if cron is None:
        for option, value in (
            ("timezone", timezone), ("missed", missed), ("expires_after", expires_after)
        ):
            if value is not None:
                raise WorkflowError(
                    f"workflow {workflow!r}: {option}={value!r} is an option of a cron "
                    "schedule; give cron= too (e.g. cron=\"0 8 * * *\")"
                )
        return None
    options: dict[str, object] = {"cron": cron}
    if timezone is not None:
        options["timezone"] = timezone
    if missed is not None:
        options["missed"] = missed
    if expires_after is not None:
        options["expires_after_ms"] = duration_ms(expires_after, field="expires_after")
    try:
        return CronSchedule.model_validate(options)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        raise WorkflowError(f"workflow {workflow!r}: {where}: {error['msg']}") from None
