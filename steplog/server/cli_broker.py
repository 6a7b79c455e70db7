"""`steplog broker ...` and `steplog topics ...`: the local Kafka broker and Steplog's topics."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Annotated

import typer

from steplog.server.broker import LocalBroker, LocalCluster, ensure_kafka_jars, local_kafka
from steplog import kafka
from steplog.server.broker.security import add_user, consume_acls, produce_acls
from steplog.server.cli_errors import reports_errors
from steplog.settings import load_settings
from steplog.topics import ReplicaMismatchPolicy, ensure_topics, topic_specs

broker_app = typer.Typer(
    help="The local Apache Kafka broker (KRaft, 127.0.0.1): one node, or a cluster (--nodes)."
)
user_app = typer.Typer(help="SCRAM users of a secured broker and their ACLs.")
broker_app.add_typer(user_app, name="user")
topics_app = typer.Typer(help="Steplog's Kafka topics.")

PortOption = Annotated[
    int | None,
    typer.Option("--port", help="Broker port, the first node's in a cluster (default: from "
                 "STEPLOG_KAFKA_BOOTSTRAP)."),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Broker data dir (default: <STEPLOG_DATA_DIR>/kafka, or "
                 "<STEPLOG_DATA_DIR>/kafka-cluster with --nodes)."),
]
NodesOption = Annotated[
    int,
    typer.Option("--nodes", min=1, max=9,
                 help="Nodes of the local cluster, each broker and controller, replicating every "
                 "topic up to 3 times; their ports are STEPLOG_KAFKA_BOOTSTRAP's hosts when it "
                 "lists as many, else consecutive from --port. Use the printed bootstrap as "
                 "STEPLOG_KAFKA_BOOTSTRAP."),
]


SecureOption = Annotated[
    bool,
    typer.Option("--secure", help="SASL/SCRAM-SHA-512 and ACLs (as STEPLOG_BROKER_SECURE=true); "
                 "the admin's credentials go to <data dir>/admin.credentials, mode 0600."),
]


def _local_kafka(
    port: int | None, data_dir: Path | None, nodes: int, *, secure: bool = False
) -> LocalBroker | LocalCluster:
    settings = load_settings(**({"broker_secure": True} if secure else {}))
    return local_kafka(settings, nodes, data_dir=data_dir, port=port)


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
    port: PortOption = None, data_dir: DataDirOption = None, secure: SecureOption = False,
    nodes: NodesOption = 1,
) -> None:
    """Start the broker (or every node of the cluster) in the background and wait until it
    answers."""
    broker = _local_kafka(port, data_dir, nodes, secure=secure)
    broker.start()
    if isinstance(broker, LocalCluster):
        typer.echo(f"Kafka cluster of {nodes} nodes running on {broker.bootstrap} "
                   f"(data in {broker.data_dir})")
        return
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
        secured = settings.model_copy(update={"broker_secure": True})
        LocalBroker.from_settings(secured, data_dir=data_dir, port=port).add_user(
            name, password, acls
        )
    typer.echo(f"user {name}: password (shown once) {password}")


@broker_app.command("stop")
@reports_errors
def broker_stop(
    port: PortOption = None, data_dir: DataDirOption = None, nodes: NodesOption = 1
) -> None:
    """Stop the broker (or every node of the cluster) started from this data dir."""
    _local_kafka(port, data_dir, nodes).stop()
    typer.echo("Kafka cluster stopped" if nodes > 1 else "Kafka broker stopped")


@broker_app.command("status")
@reports_errors
def broker_status(
    port: PortOption = None, data_dir: DataDirOption = None, nodes: NodesOption = 1
) -> None:
    """Print the broker's (or each node's) status; exit 1 when it (or any node) is not
    running."""
    status = _local_kafka(port, data_dir, nodes).status()
    typer.echo(status.model_dump_json(indent=2))
    if not status.running:
        raise typer.Exit(1)


_REASSIGN_TIMEOUT_S = 600.0
"""How long `--reassign` waits for Kafka to copy the partitions to their new brokers."""


@topics_app.command("ensure")
@reports_errors
def topics_ensure(
    reassign: Annotated[
        bool,
        typer.Option("--reassign", help="Reassign the partitions of topics with other replica "
                     "counts than the settings ask (Kafka copies them to their new brokers) "
                     "and wait until the new replicas are in sync; without it such topics are "
                     "an error."),
    ] = False,
) -> None:
    """Create the topics (idempotent) and align their replicas and configs with the settings;
    warn about topics with one replica on a cluster of several brokers."""
    settings = load_settings()
    policy = ReplicaMismatchPolicy.REASSIGN if reassign else ReplicaMismatchPolicy.FAIL
    ensured = ensure_topics(
        settings.kafka_bootstrap, topic_specs(settings), on_replica_mismatch=policy,
        timeout=_REASSIGN_TIMEOUT_S if reassign else 30.0,
    )
    for report in asyncio.run(ensured):
        typer.echo(f"{report.name:<40} {report.partitions:>4} partitions {report.replicas:>2} "
                   f"replicas  {report.outcome}")
