"""The `steplog` command line.

Typer gives typed options, --help and shell completion from the function signatures; every
command reads settings through `load_settings()` and turns Steplog's own errors into one clear
line on stderr and exit status 2 (steplog/server/cli_errors.py). The command groups live beside
this module: `broker` and `topics` (cli_broker.py), `runs` (cli_runs.py), `sql` and `replay`
(cli_sql.py); this module makes the app and holds the stack's own commands.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from steplog.errors import SettingsError
from steplog.metrics import serve_metrics
from steplog.producers.flows_file import load_flows_file, push_flows
from steplog.projections.migrations import migrate
from steplog.server.api import serve_api
from steplog.server.broker import LocalCluster
from steplog.server.child_process import settle_child
from steplog.server.cli_broker import broker_app, topics_app
from steplog.server.cli_errors import reports_errors
from steplog.server.cli_keys import keys_app
from steplog.server.cli_runs import runs_app
from steplog.server.cli_sql import replay, sql
from steplog.server.demo import demo_hooks
from steplog.server.health import check_stack
from steplog.server.sql_client import engine_client
from steplog.server.stack import logged_in_to_local_broker, run_dev, run_processors
from steplog.settings import env_name, load_settings

app = typer.Typer(
    help="Steplog: durable workflows and run/step observability on an event log.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(broker_app, name="broker")
app.add_typer(topics_app, name="topics")
flows_app = typer.Typer(help="Flow definitions (.steplog/flows.json).")
app.add_typer(flows_app, name="flows")
app.add_typer(runs_app, name="runs")
app.add_typer(keys_app, name="keys")


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
    """Serve the web service (foreground): the dashboard, the JSON API (/v1/runs, /v1/ops, ...,
    /v1/openapi.json) and ingestion (POST /v1/events, /v1/signals, /v1/flows; GET /healthz).

    SIGINT/SIGTERM let requests finish and flush what was accepted, then stop.
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
    api_port: Annotated[
        int | None,
        typer.Option("--api-port", min=1, max=65535,
                     help="Serve the dashboard, the JSON API and ingestion here, on 127.0.0.1 "
                     "(default: STEPLOG_API_PORT, 8000)."),
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="Run the example checkout service and print queries.")
    ] = False,
    exit_after_demo: Annotated[
        bool, typer.Option("--exit-after-demo", help="Stop the stack once the demo has printed.")
    ] = False,
    brokers: Annotated[
        int,
        typer.Option("--brokers", min=1, max=9,
                     help="Run a local Kafka cluster of this many nodes (data in <data dir>/"
                     "kafka-cluster, ports consecutive from --kafka-port unless "
                     "STEPLOG_KAFKA_BOOTSTRAP lists as many hosts); every client of the stack "
                     "bootstraps from all of them."),
    ] = 1,
) -> None:
    """The whole local stack in the foreground: broker (or cluster), topics, tables,
    processors, SQL, and the web service (dashboard, JSON API, ingestion).

    Ctrl-C stops everything it started.
    """
    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if kafka_port is not None:
        overrides["kafka_bootstrap"] = f"127.0.0.1:{kafka_port}"
    if sql_port is not None:
        overrides["sql_port"] = sql_port
    if api_port is not None:
        overrides["api_port"] = api_port
    if brokers > 1:
        # The processors, the web service and the demo (and STEPLOG_KAFKA_BOOTSTRAP of every
        # child) bootstrap from every node, so that none depends on one node being up.
        cluster = LocalCluster.from_settings(load_settings(**overrides), brokers)
        overrides["kafka_bootstrap"] = cluster.bootstrap
    settings = logged_in_to_local_broker(load_settings(**overrides))
    hooks = demo_hooks(settings, exit_after=exit_after_demo) if demo else None
    run_dev(settings, sql_port=settings.sql_port, hooks=hooks, brokers=brokers)


@app.command("otel-export")
@reports_errors
def otel_export() -> None:
    """Export runs and steps as OpenTelemetry traces over OTLP/HTTP to STEPLOG_OTEL_ENDPOINT
    (foreground; a consumer group of its own on the events topic). SIGINT/SIGTERM stop it
    after the batch in hand is exported and committed."""
    settings = load_settings()
    try:
        # The optional `otel` extra: imported here so that every other command runs without it.
        from steplog.server.otel_export import run_otel_export
    except ImportError as exc:
        raise SettingsError(f"steplog otel-export needs the OpenTelemetry SDK ({exc.name} is "
                            "missing): pip install 'steplog[otel]'") from exc
    run_otel_export(settings)


@app.command("status")
@reports_errors
def status() -> None:
    """Check the Kafka cluster (hosts, brokers, partitions, replication), the processors
    (members, lag, each one's health endpoint) and ClickHouse (SELECT 1); exit 0 only when
    all are healthy (`warn`: redundancy missing by configuration), else name each failure."""
    settings = load_settings()
    checks = asyncio.run(check_stack(settings))
    for check in checks:
        mark = "FAIL" if not check.healthy else "warn" if check.warning else "ok  "
        typer.echo(f"{mark} {check.name:<13} {check.detail}")
    if not all(check.healthy for check in checks):
        raise typer.Exit(1)


# Registered here, in this order, so that `steplog --help` lists the commands as it always has.
app.command("sql")(sql)
app.command("replay")(replay)


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
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", min=0, max=65535,
                     help="Serve Prometheus metrics (GET /metrics) on this port of "
                     "STEPLOG_WORKER_METRICS_HOST (default: STEPLOG_WORKER_METRICS_PORT; 0: "
                     "none)."),
    ] = None,
    runner: Annotated[
        str | None,
        typer.Option("--runner",
                     help="This worker's runner name: it also executes the runs pinned to it "
                     "(run_workflow(..., runner=NAME)). Default: the host's name."),
    ] = None,
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
    # A bad STEPLOG_* variable fails here, with its name, before any connection.
    settings = load_settings()
    port = settings.worker_metrics_port if metrics_port is None else metrics_port
    if port:
        serve_metrics(settings.worker_metrics_host, port)
        typer.echo(f"metrics on http://{settings.worker_metrics_host}:{port}/metrics")
    typer.echo(
        f"worker for app {application.name!r}: "
        + (", ".join(sorted(application.workflows)) or "no workflows")
    )
    application.worker(concurrency=concurrency, stop_timeout=stop_timeout, runner=runner).run()
