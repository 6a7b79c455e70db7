"""`steplog runs ...`: a run of a durable workflow by its id: wait for its result, cancel it, or
run it again. The SQL that finds a run and reads its end is projections/queries.py's; these
commands run it over the analyst's client (steplog/server/sql_client.py)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from clickhouse_connect.driver.client import Client as ClickHouseClient

from steplog.errors import (
    ClickHouseError,
    ResultTimeoutError,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    SteplogError,
    WorkflowError,
)
from steplog.producers.client import Client
from steplog.producers.run_end_lookup import RunEndLookup
from steplog.projections.queries import RUN_END_SQL, RunEnd, RunSummary, find_run_query
from steplog.schemas.base import TriggerInfo
from steplog.schemas.statuses import ENDED_RUN_STATUSES
from steplog.server.cli_errors import reports_errors
from steplog.server.sql_client import analyst_client
from steplog.settings import Settings, load_settings

runs_app = typer.Typer(help="Runs of durable workflows: wait for one's result, cancel or "
                       "re-trigger one.")

RunProjectOption = Annotated[
    str | None,
    typer.Option("--project", help="The run's project, when the id is used in several."),
]


@runs_app.command("cancel")
@reports_errors
def runs_cancel(
    run_id: Annotated[str, typer.Argument(help="The run to cancel.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Recorded on the run.")] = None,
    project: RunProjectOption = None,
) -> None:
    """Cancel a run of a durable workflow (writes run.cancelled).

    The processors then stop its worker, its timers, its waits and its child runs.
    """
    settings = load_settings()
    run = find_run(settings, run_id, project)
    if run.status in ENDED_RUN_STATUSES:
        raise WorkflowError(f"run {run_id} of {run.flow!r} already ended ({run.status}); "
                            "nothing to cancel")
    client = Client(project=run.project, settings=settings)
    try:
        client.cancel(run_id, flow=run.flow, reason=reason)
    finally:
        client.close()
    typer.echo(f"cancelled run {run_id} of {run.flow!r} (project {run.project!r})")


@runs_app.command("retrigger")
@reports_errors
def runs_retrigger(
    run_id: Annotated[str, typer.Argument(help="The run to run again from the start.")],
    project: RunProjectOption = None,
) -> None:
    """Run a workflow run again from the start; prints the new run's id.

    The new run has the same workflow, app, input and trigger, and records `retrigger_of`.
    """
    settings = load_settings()
    run = find_run(settings, run_id, project)
    if not run.app:
        raise WorkflowError(
            f"run {run_id} of {run.flow!r} is not a workflow run (no app recorded); only "
            "runs of durable workflows can be re-triggered"
        )
    trigger = (
        TriggerInfo(name=run.trigger_event, event_id=run.trigger_event_id)
        if run.trigger_event and run.trigger_event_id
        else None
    )
    client = Client(project=run.project, settings=settings)
    try:
        new_run_id = client.retrigger(
            run_id, workflow=run.flow, app=run.app, data=run.input, trigger=trigger
        )
    finally:
        client.close()
    typer.echo(new_run_id)


# `runs result` exit statuses beside 0 (completed) and 2 (an error, as for every command).
EXIT_RUN_FAILED = 1
EXIT_RUN_CANCELLED = 3
EXIT_RUN_NOT_ENDED = 4


@runs_app.command("result")
@reports_errors
def runs_result(
    run_id: Annotated[str, typer.Argument(help="The run whose result to print.")],
    wait: Annotated[
        float | None,
        typer.Option("--wait", min=0, help="Seconds to wait for the run to end (default: "
                     "no limit)."),
    ] = None,
    project: RunProjectOption = None,
) -> None:
    """Print a run's output (the JSON its workflow function returned) once it has ended.

    Exit status 0: completed, the output on stdout; 1: failed; 3: cancelled; 4: not ended
    within --wait; 2: an error (the reason on stderr in every case but 0). A run that ended
    long ago is answered from ClickHouse; one still going is followed on the events topic.
    """
    settings = load_settings()
    analyst = analyst_client(settings)
    workflow = None
    try:
        run = find_run(settings, run_id, project, analyst=analyst)
        project, workflow = run.project, run.flow
    except RunNotFoundError:
        pass  # not folded yet (just started?): wait for it in the project named, or ours
    client = Client(
        project=project or settings.project, settings=settings,
        run_end_lookup=analyst_run_end_lookup(analyst),
    )
    try:
        output = client.run_handle(run_id, workflow=workflow).result(timeout=wait)
    except RunFailedError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        if exc.error_stack:
            typer.echo(exc.error_stack.rstrip("\n"), err=True)
        raise typer.Exit(EXIT_RUN_FAILED) from None
    except RunCancelledError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_RUN_CANCELLED) from None
    except ResultTimeoutError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_RUN_NOT_ENDED) from None
    finally:
        client.close()
    typer.echo(json.dumps(output, indent=2))


def analyst_run_end_lookup(analyst: ClickHouseClient) -> RunEndLookup:
    """How `runs result` asks ClickHouse for a run's end: through the analyst's client (the
    stack's SQL endpoint, a server, or the chDB files when no stack holds them)."""

    def lookup(run_id: str, project: str) -> RunEnd | None:
        parameters = {"run_id": run_id, "project": project}
        try:
            rows = analyst.query(RUN_END_SQL, parameters=parameters).result_rows
        except Exception as exc:
            raise ClickHouseError(
                f"cannot read the end of run {run_id} from events: {exc}"
            ) from exc
        if not rows:
            return None
        event_type, flow, payload = rows[0]
        return RunEnd.from_row(run_id, project, str(flow), str(event_type), str(payload))

    return lookup


def find_run(
    settings: Settings, run_id: str, project: str | None, *,
    analyst: ClickHouseClient | None = None,
) -> RunSummary:
    """The run's row in runs_current; RunNotFoundError when there is none, WorkflowError when
    the id is in several projects and none was named. `analyst`: the client to ask (default:
    `analyst_client(settings)`)."""
    sql, parameters = find_run_query(run_id, project)
    try:
        client = analyst if analyst is not None else analyst_client(settings)
        rows = client.query(sql, parameters=parameters).result_rows
    except SteplogError:
        raise
    except Exception as exc:
        raise ClickHouseError(f"cannot read run {run_id} from runs_current: {exc}") from None
    if not rows:
        where = f" in project {project!r}" if project else ""
        raise RunNotFoundError(
            f"run {run_id!r}{where} is not in runs_current of database "
            f"{settings.clickhouse_database!r} (are the processors running?)"
        )
    if len(rows) > 1:
        projects = ", ".join(sorted(str(row[0]) for row in rows))
        raise WorkflowError(
            f"run id {run_id!r} is in several projects ({projects}); name one with --project"
        )
    return RunSummary.from_row(rows[0])
