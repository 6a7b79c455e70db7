"""`steplog sql` and `steplog replay`: the commands that read or rebuild the projections
(registered on the app by steplog/server/cli.py)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from steplog.errors import ClickHouseError, ClickHousePathLockedError, SteplogError
from steplog.projections.clickhouse import chdb_path
from steplog.projections.migrations import PROJECTION_TABLES
from steplog.server.cli_errors import reports_errors
from steplog.server.gc_tuning import tune_gc_for_batches
from steplog.server.replay import log_size, replay_log
from steplog.server.sql_client import OutputFormat, analyst_client, render
from steplog.server.stack_lock import claim_for_command
from steplog.settings import Settings, load_settings


@reports_errors
def sql(
    query: Annotated[str, typer.Argument(help="The SQL to run, e.g. \"SELECT * FROM runs_current\".")],
    output: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="How to print the result.")
    ] = OutputFormat.TABLE,
) -> None:
    """Run a query against Steplog's tables and print the result."""
    settings = load_settings()
    try:
        result = analyst_client(settings).query(query)
    except SteplogError:
        raise
    except Exception as exc:  # ClickHouse's own message says what is wrong with the query
        raise ClickHouseError(str(exc)) from None
    typer.echo(render(result.column_names, result.result_rows, output))


@reports_errors
def replay(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Rebuild beside the live tables and print a diff.")
    ] = False,
    processes: Annotated[
        int | None,
        typer.Option("--processes", min=1, help="Fold processes (default: one per core)."),
    ] = None,
) -> None:
    """Rebuild every projection from offset 0 of the log and swap it in (processors stopped)."""
    tune_gc_for_batches()  # this process inserts what the fold processes send
    settings = load_settings()
    refuse_while_a_stack_runs(settings, "replay")
    total = asyncio.run(log_size(settings))
    with Progress(
        TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TextColumn("records"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task("replay", total=total)
        report = replay_log(
            settings, dry_run=dry_run, processes=processes,
            progress=lambda n: bar.advance(task, n),
        )
    rate = report.events / report.seconds if report.seconds else 0.0
    typer.echo(
        f"folded {report.events} events of {report.runs} runs and {report.flows} flows in "
        f"{report.seconds:.1f}s ({rate:,.0f} events/s); {report.invalid} invalid skipped, "
        f"{report.refused} rows refused by ClickHouse"
    )
    if report.swapped:
        typer.echo("rebuilt tables swapped in: " + ", ".join(PROJECTION_TABLES))
        return
    for diff in report.diffs:
        verdict = "identical" if diff.identical else (
            f"{diff.only_live} rows only live, {diff.only_rebuilt} only rebuilt"
        )
        typer.echo(f"{diff.table:<7} live {diff.live_rows:>8}  rebuilt {diff.rebuilt_rows:>8}  {verdict}")
        for sample in diff.samples:
            typer.echo(f"    {sample}")
    if not all(diff.identical for diff in report.diffs):
        raise typer.Exit(1)


def refuse_while_a_stack_runs(settings: Settings, command: str) -> None:
    """For a command that must own the embedded engine's files (and the processors stopped):
    take them (steplog/server/stack_lock.py), or say which stack holds them."""
    path = chdb_path(settings.clickhouse_dsn)
    holder = claim_for_command(path) if path is not None else None
    if holder is not None:
        raise ClickHousePathLockedError(
            f"`steplog {command}` needs the processors stopped and the embedded ClickHouse "
            f"data at {path} to itself, but {holder.describe()} holds it; stop it first"
        )
