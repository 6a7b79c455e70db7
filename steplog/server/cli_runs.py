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
from steplog.projections.cursors import CursorError
from steplog.projections.run_detail_reads import run_detail
from steplog.projections.run_reads import list_runs
from steplog.server.cli_errors import reports_errors
from steplog.server.read_routes import DEFAULT_LIMIT, MAX_LIMIT, run_filter
from steplog.server.run_terminal import render_run, render_run_list
from steplog.server.web_errors import BadRequest
from steplog.server.run_actions import check_cancellable, check_retriggerable, trigger_of
from steplog.server.sql_client import analyst_client
from steplog.settings import Settings, load_settings

runs_app = typer.Typer(help="Runs: list them, show one's steps, wait for a workflow run's "
                       "result, cancel or re-trigger one.")

RunProjectOption = Annotated[
    str | None,
    typer.Option("--project", help="The run's project, when the id is used in several."),
]


@runs_app.command("list")
@reports_errors
def runs_list(
    flow: Annotated[str | None, typer.Option("--flow", help="Only runs of this flow.")] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", help="Only runs in these statuses (comma-separated; overdue "
                     "and stuck too)."),
    ] = None,
    project: Annotated[str | None, typer.Option("--project", help="Only this project.")] = None,
    search: Annotated[
        str | None, typer.Option("--search", help="A run id, its prefix, or a trigger event.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Older runs: the cursor the last page printed.")
    ] = None,
) -> None:
    """The newest runs, with their status, flow, trigger and duration, and counts by status."""
    query = {name: value for name, value in
             (("flow", flow), ("status", status), ("project", project), ("q", search))
             if value is not None}
    try:
        chosen = run_filter(query)
    except BadRequest as exc:
        raise WorkflowError(exc.message.replace("query parameter ", "--")) from None
    settings = load_settings()
    client = analyst_client(settings)
    try:
        page = list_runs(client, settings.clickhouse_database, chosen, cursor=cursor, limit=limit)
    except CursorError as exc:
        raise WorkflowError(str(exc).replace("cursor", "--cursor", 1)) from None
    typer.echo(render_run_list(page))


@runs_app.command("show")
@reports_errors
def runs_show(run_id: Annotated[str, typer.Argument(help="The run to show.")]) -> None:
    """One run as a timeline: each step with its glyph, duration, attempts, return value and
    error, in the order they ran."""
    settings = load_settings()
    detail = run_detail(analyst_client(settings), settings.clickhouse_database, run_id)
    if detail is None:
        raise RunNotFoundError(
            f"run {run_id!r} is not in database {settings.clickhouse_database!r} (are the "
            "processors running?)"
        )
    typer.echo(render_run(detail))


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
    check_cancellable(run_id, run)
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
    check_retriggerable(run_id, run)
    client = Client(project=run.project, settings=settings)
    try:
        new_run_id = client.retrigger(
            run_id, workflow=run.flow, app=run.app, data=run.input, trigger=trigger_of(run)
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
