"""The `steplog` command line.

Typer gives typed options, --help and shell completion from the function signatures; every
command reads settings through `load_settings()` and turns Steplog's own errors into one clear
line on stderr and exit status 2 (a traceback is for bugs, not for bad input).
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from steplog.broker import LocalBroker, ensure_kafka_jars
from steplog.demo import run_demo
from steplog.errors import SteplogError
from steplog.projections.clickhouse import open_clickhouse
from steplog.projections.migrations import migrate
from steplog.settings import env_name, load_settings
from steplog.topics import ensure_topics, topic_specs

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
    applied = migrate(open_clickhouse(settings.clickhouse_dsn), settings.clickhouse_database)
    for migration in applied:
        typer.echo(f"applied migration {migration.version}: {migration.name}")
    typer.echo(f"tables in {settings.clickhouse_database!r} are up to date")


@app.command("settings")
@reports_errors
def show_settings() -> None:
    """Print the effective settings, by environment variable."""
    settings = load_settings()
    shown = {env_name(k): v for k, v in json.loads(settings.model_dump_json()).items()}
    typer.echo(json.dumps(shown, indent=2))


@app.command("demo")
@reports_errors
def demo(
    runs: Annotated[int, typer.Option(help="How many demo runs to send.")] = 5,
) -> None:
    """Start the local stack, send demo events through the SDK's sender and read them back."""
    run_demo(load_settings(), runs=runs, out=sys.stdout)
