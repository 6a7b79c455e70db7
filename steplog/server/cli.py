"""The `steplog` command line.

Typer gives typed options, --help and shell completion from the function signatures; every
command reads settings through `load_settings()` and turns Steplog's own errors into one clear
line on stderr and exit status 2 (a traceback is for bugs, not for bad input).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from steplog.server.api import serve_api
from steplog.server.broker import LocalBroker, ensure_kafka_jars
from steplog.server.demo import demo_hooks
from steplog.errors import SteplogError
from steplog.server.gc_tuning import tune_gc_for_batches
from steplog.server.child_process import settle_child
from steplog.projections.clickhouse import chdb_path
from steplog.projections.migrations import migrate
from steplog.settings import env_name, load_settings
from steplog.topics import ensure_topics, topic_specs
from steplog.server.health import check_stack
from steplog.producers.flows_file import load_flows_file, push_flows
from steplog.projections.migrations import PROJECTION_TABLES
from steplog.server.replay import log_size, replay_log
from steplog.server.sql_client import OutputFormat, analyst_client, engine_client, render
from steplog.server.stack import run_dev, run_processors
from steplog.server.stack_lock import claim_for_command
from steplog.errors import (
    ClickHouseError,
    ClickHousePathLockedError,
    ResultTimeoutError,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    WorkflowError,
)
from steplog.producers.client import Client
from steplog.producers.run_results import RUN_END_SQL, RunEnd, RunEndLookup
from clickhouse_connect.driver.client import Client as ClickHouseClient
from steplog.schemas.base import TriggerInfo
from steplog.settings import Settings
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    help="Steplog: durable workflows and run/step observability on an event log.",
    no_args_is_help=True,
    add_completion=False,
)
broker_app = typer.Typer(help="The local Apache Kafka broker (KRaft, one node, 127.0.0.1).")
topics_app = typer.Typer(help="Steplog's Kafka topics.")
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
flows_app = typer.Typer(help="Flow definitions (.steplog/flows.json).")
app.add_typer(flows_app, name="flows")
runs_app = typer.Typer(help="Runs of durable workflows: wait for one's result, cancel or "
                        "re-trigger one.")
app.add_typer(runs_app, name="runs")

PortOption = Annotated[
    int | None, typer.Option("--port", help="Broker port (default: from STEPLOG_KAFKA_BOOTSTRAP).")
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Broker data dir (default: <STEPLOG_DATA_DIR>/kafka)."),
]


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Print Steplog's deliberate errors as one line and exit 2 instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except SteplogError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper


def _local_broker(port: int | None, data_dir: Path | None) -> LocalBroker:
    return LocalBroker.from_settings(load_settings(), data_dir=data_dir, port=port)


@broker_app.command("install")
@reports_errors
def broker_install() -> None:
    """Resolve the broker's jars from Maven Central into the cache (reused afterwards)."""
    settings = load_settings()
    libs = ensure_kafka_jars(settings.kafka_version, settings.cache_dir)
    typer.echo(f"Kafka {settings.kafka_version} jars ready in {libs}")


@broker_app.command("start")
@reports_errors
def broker_start(port: PortOption = None, data_dir: DataDirOption = None) -> None:
    """Start the broker in the background and wait until it answers."""
    broker = _local_broker(port, data_dir)
    broker.start()
    typer.echo(f"Kafka broker running on {broker.bootstrap} (data in {broker.data_dir})")


@broker_app.command("stop")
@reports_errors
def broker_stop(port: PortOption = None, data_dir: DataDirOption = None) -> None:
    """Stop the broker started from this data dir."""
    broker = _local_broker(port, data_dir)
    broker.stop()
    typer.echo("Kafka broker stopped")


@broker_app.command("status")
@reports_errors
def broker_status(port: PortOption = None, data_dir: DataDirOption = None) -> None:
    """Print the broker's status; exit 1 when it is not running."""
    status = _local_broker(port, data_dir).status()
    typer.echo(status.model_dump_json(indent=2))
    if not status.running:
        raise typer.Exit(1)


@topics_app.command("ensure")
@reports_errors
def topics_ensure() -> None:
    """Create the topics (idempotent) and align their configs with the settings."""
    settings = load_settings()
    for report in asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings))):
        typer.echo(f"{report.name:<40} {report.partitions:>4} partitions  {report.outcome}")


@app.command("migrate")
@reports_errors
def migrate_tables() -> None:
    """Create or upgrade Steplog's ClickHouse tables (idempotent)."""
    settings = load_settings()
    # Through the stack's SQL endpoint when a stack holds the embedded engine's files.
    applied = migrate(engine_client(settings, None), settings.clickhouse_database)
    for migration in applied:
        typer.echo(f"applied migration {migration.version}: {migration.name}")
    typer.echo(f"tables in {settings.clickhouse_database!r} are up to date")


SqlPortOption = Annotated[
    int | None,
    typer.Option("--sql-port", help="Serve SQL (ClickHouse HTTP) here (default: STEPLOG_SQL_PORT)."),
]


@app.command("processors")
@reports_errors
def processors(
    sql_port: SqlPortOption = None,
    supervised_by: Annotated[
        int | None,
        typer.Option("--supervised-by", hidden=True,
                     help="Pid of the `steplog dev` that runs these processors (they die with "
                     "it, and it holds the stack lock)."),
    ] = None,
) -> None:
    """Run the processors against the configured Kafka and ClickHouse (foreground).

    With the embedded engine a child process of it owns the chDB files and serves SQL for
    everyone.
    """
    if supervised_by is not None:
        settle_child(supervised_by)
    settings = load_settings()
    run_processors(settings, sql_port=sql_port or settings.sql_port,
                   supervised=supervised_by is not None)


@app.command("api")
@reports_errors
def api(
    host: Annotated[
        str,
        typer.Option(
            "--host", help="Address to listen on (0.0.0.0: every interface, in a container)."
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")
    ] = 8000,
) -> None:
    """Serve the ingest API (foreground): POST /v1/events, /v1/signals, /v1/flows; GET /healthz.

    For services that cannot run the Python SDK; SIGINT/SIGTERM flush what was accepted, then stop.
    """
    serve_api(load_settings(), host=host, port=port)


@app.command("dev")
@reports_errors
def dev(
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Local state (default: STEPLOG_DATA_DIR).")
    ] = None,
    kafka_port: Annotated[
        int | None, typer.Option("--kafka-port", help="Broker port on 127.0.0.1.")
    ] = None,
    sql_port: SqlPortOption = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Run the example checkout service and print queries.")
    ] = False,
    exit_after_demo: Annotated[
        bool, typer.Option("--exit-after-demo", help="Stop the stack once the demo has printed.")
    ] = False,
) -> None:
    """The whole local stack in the foreground: broker, topics, tables, processors, SQL.

    Ctrl-C stops everything it started.
    """
    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if kafka_port is not None:
        overrides["kafka_bootstrap"] = f"127.0.0.1:{kafka_port}"
    if sql_port is not None:
        overrides["sql_port"] = sql_port
    settings = load_settings(**overrides)
    hooks = demo_hooks(settings, exit_after=exit_after_demo) if demo else None
    run_dev(settings, sql_port=settings.sql_port, hooks=hooks)


@app.command("status")
@reports_errors
def status() -> None:
    """Check the broker, the processors (members, lag, each one's health endpoint) and
    ClickHouse (SELECT 1); exit 0 only when all are healthy, else name each failure."""
    settings = load_settings()
    checks = asyncio.run(check_stack(settings))
    for check in checks:
        mark = "ok  " if check.healthy else "FAIL"
        typer.echo(f"{mark} {check.name:<13} {check.detail}")
    if not all(check.healthy for check in checks):
        raise typer.Exit(1)


@app.command("sql")
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


@app.command("replay")
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


@flows_app.command("push")
@reports_errors
def flows_push(
    file: Annotated[
        Path, typer.Option("--file", help="The flows file.")
    ] = Path(".steplog/flows.json"),
) -> None:
    """Validate the flows file and register every flow (on the flows topic)."""
    settings = load_settings()
    definitions = load_flows_file(file, settings.project)
    push_flows(settings, definitions)
    for definition in definitions:
        typer.echo(
            f"pushed flow {definition.slug!r}: {len(definition.steps)} steps, "
            f"{len(definition.edges)} edges"
        )


@app.command("settings")
@reports_errors
def show_settings() -> None:
    """Print the effective settings, by environment variable."""
    settings = load_settings()
    shown = {env_name(k): v for k, v in json.loads(settings.model_dump_json()).items()}
    typer.echo(json.dumps(shown, indent=2))


# --- durable workflows ----------------------------------------------------------------------


@app.command("worker")
@reports_errors
def worker(
    target: Annotated[
        str, typer.Argument(help="The app to serve, MODULE:APP (e.g. shop.workflows:app).")
    ],
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Runs executed at once.")
    ] = 200,
    stop_timeout: Annotated[
        float,
        typer.Option("--stop-timeout", min=0, help="Seconds a stop waits for executing steps."),
    ] = 30.0,
) -> None:
    """Run a worker for a steplog.App (foreground): MODULE:APP, e.g. shop.workflows:app.

    It registers the app's workflows and executes their runs. SIGINT/SIGTERM stop it
    gracefully: in-flight runs are interrupted and resumed by the next worker.
    """
    from steplog.producers.app import load_app

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    application = load_app(target)
    load_settings()  # a bad STEPLOG_* variable fails here, with its name, before any connection
    typer.echo(
        f"worker for app {application.name!r}: "
        + (", ".join(sorted(application.workflows)) or "no workflows")
    )
    application.worker(concurrency=concurrency, stop_timeout=stop_timeout).run()


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
    if run.status in _ENDED:
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


_ENDED = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class RunRow:
    """What `runs cancel` and `runs retrigger` need of a run (from runs_current)."""

    project: str
    flow: str
    app: str
    input: Any
    trigger_event: str
    trigger_event_id: str
    status: str


def find_run(
    settings: Settings, run_id: str, project: str | None, *,
    analyst: ClickHouseClient | None = None,
) -> RunRow:
    """The run's row in runs_current; RunNotFoundError when there is none, WorkflowError when
    the id is in several projects and none was named. `analyst`: the client to ask (default:
    `analyst_client(settings)`)."""
    sql = (
        "SELECT project, flow, app, input, trigger_event, trigger_event_id, recorded_status "
        "FROM runs_current WHERE run_id = {run_id:String}"
    )
    parameters: dict[str, object] = {"run_id": run_id}
    if project is not None:
        sql += " AND project = {project:String}"
        parameters["project"] = project
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
    project_name, flow, app_name, input_text, trigger_event, trigger_event_id, status = rows[0]
    return RunRow(
        project=str(project_name),
        flow=str(flow),
        app=str(app_name),
        input=json.loads(input_text) if input_text else None,
        trigger_event=str(trigger_event),
        trigger_event_id=str(trigger_event_id),
        status=str(status),
    )
