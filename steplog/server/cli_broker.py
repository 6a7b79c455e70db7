"""`steplog broker ...` and `steplog topics ...`: the local Kafka broker and Steplog's topics."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Annotated

import typer

from steplog.server.broker import LocalBroker, ensure_kafka_jars
from steplog import kafka
from steplog.server.broker.security import add_user, consume_acls, produce_acls
from steplog.server.cli_errors import reports_errors
from steplog.settings import load_settings
from steplog.topics import ensure_topics, topic_specs

broker_app = typer.Typer(help="The local Apache Kafka broker (KRaft, one node, 127.0.0.1).")
user_app = typer.Typer(help="SCRAM users of a secured broker and their ACLs.")
broker_app.add_typer(user_app, name="user")
topics_app = typer.Typer(help="Steplog's Kafka topics.")

PortOption = Annotated[
    int | None, typer.Option("--port", help="Broker port (default: from STEPLOG_KAFKA_BOOTSTRAP).")
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Broker data dir (default: <STEPLOG_DATA_DIR>/kafka)."),
]


SecureOption = Annotated[
    bool,
    typer.Option("--secure", help="SASL/SCRAM-SHA-512 and ACLs (as STEPLOG_BROKER_SECURE=true); "
                 "the admin's credentials go to <data dir>/admin.credentials, mode 0600."),
]


def _local_broker(
    port: int | None, data_dir: Path | None, *, secure: bool = False
) -> LocalBroker:
    settings = load_settings(**({"broker_secure": True} if secure else {}))
    return LocalBroker.from_settings(settings, data_dir=data_dir, port=port)


@broker_app.command("install")
@reports_errors
def broker_install() -> None:
    """Resolve the broker's jars from Maven Central into the cache (reused afterwards)."""
    settings = load_settings()
    libs = ensure_kafka_jars(settings.kafka_version, settings.cache_dir)
    typer.echo(f"Kafka {settings.kafka_version} jars ready in {libs}")


@broker_app.command("start")
@reports_errors
def broker_start(
    port: PortOption = None, data_dir: DataDirOption = None, secure: SecureOption = False
) -> None:
    """Start the broker in the background and wait until it answers."""
    broker = _local_broker(port, data_dir, secure=secure)
    broker.start()
    how = " with SASL/SCRAM and ACLs" if broker.secure else ""
    typer.echo(f"Kafka broker running on {broker.bootstrap}{how} (data in {broker.data_dir})")


@user_app.command("add")
@reports_errors
def broker_user_add(
    name: Annotated[str, typer.Argument(help="The SCRAM user to create (or give a new password).")],
    produce: Annotated[
        list[str] | None, typer.Option("--produce", help="A topic it may write to (repeatable).")
    ] = None,
    consume: Annotated[
        list[str] | None, typer.Option("--consume", help="A topic it may read (repeatable).")
    ] = None,
    group: Annotated[
        str | None, typer.Option("--group", help="The consumer group it reads in.")
    ] = None,
    port: PortOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create a user with only the ACLs given; prints its password once (set it as
    STEPLOG_KAFKA_SASL_USERNAME / STEPLOG_KAFKA_SASL_PASSWORD). As the admin of the secured
    local broker of the data dir; or, when STEPLOG_KAFKA_SASL_USERNAME is set (a deployment's
    cluster), as that user on STEPLOG_KAFKA_BOOTSTRAP, who must be allowed to alter users and
    ACLs (a super user)."""
    acls = [acl for topic in produce or [] for acl in produce_acls(topic)]
    acls += [acl for topic in consume or [] for acl in consume_acls(topic, group)]
    password = secrets.token_urlsafe(24)
    settings = load_settings()
    if settings.kafka_sasl_username is not None:
        asyncio.run(add_user(kafka.access(settings), name, password, acls))
    else:
        _local_broker(port, data_dir, secure=True).add_user(name, password, acls)
    typer.echo(f"user {name}: password (shown once) {password}")


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
