"""Running Steplog's server side: the processors (`steplog processors`) and, around them, the
whole local stack (`steplog dev`: broker, topics, tables, processors, SQL endpoint).

The processors run as a faust worker in the foreground; faust handles SIGINT/SIGTERM by
stopping its agents and tasks (a batch in hand is abandoned before its commit and handled again
after a restart, see docs/processors.md), and `steplog dev` then stops the broker it started.

With the embedded engine a child process of the processors owns the chDB files
(steplog/server/store_process.py): it migrates them, writes the processors' rows and serves SQL
over ClickHouse's HTTP interface for everyone else. It is stopped after the worker, so after
the last write; it dies with the processors if they are killed; and if it dies first, the
processors exit with an error. With a ClickHouse server the processors write to it themselves.

`steplog dev` runs the processors as a child process it restarts when they die
(steplog/server/supervisor.py). Each processors process serves a health endpoint
(steplog/server/process_health.py) and joins its consumer groups as a static member
(processors/membership.py). The stack takes the engine's stack lock before anything else
(steplog/server/stack_lock.py), so that commands run while it starts wait for its SQL endpoint.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faust

from steplog.credentials import admin_key_path
from steplog.server.admin_key import ensure_admin_key
from steplog.server.api import WebServiceThread
from steplog.server.broker import LocalBroker, local_kafka
from steplog.server.broker.security import MECHANISM, load_or_create_admin
from steplog.errors import SettingsError
from steplog.server.gc_tuning import tune_gc_for_batches
from steplog.server.key_ring import KeyRingFollower
from steplog.server.process_health import ProcessHealth, bind_health_socket
from steplog.processors.app import create_processor_app
from steplog.processors.config import ProcessorConfig
from steplog.processors.membership import claim_membership
from steplog.processors.run_retention import state_retention
from steplog.projections.clickhouse import chdb_path, open_clickhouse
from steplog.projections.flows_table import load_flows
from steplog.projections.migrations import migrate
from steplog.server.store_process import StoreProcess
from steplog.projections.writer import BatchWriter, ProjectionWriter
from steplog.record_signer import record_signer, signatures_enforced
from steplog.settings import Settings, child_environment
from steplog.server.stack_lock import claim_for_stack
from steplog.server.supervisor import ProcessorsSupervisor
from steplog.topics import (
    ReplicaMismatchPolicy,
    TopicSpec,
    check_replication,
    ensure_topics,
    topic_specs,
)

log = logging.getLogger("steplog.server.stack")

_KEYS_WAIT_S = 60.0
"""How long the processors wait to have read the keys topic before they start."""


def processor_config(settings: Settings) -> ProcessorConfig:
    return ProcessorConfig(
        app_id=settings.processors_group,
        bootstrap=settings.kafka_bootstrap,
        topics=settings.topics,
        events_partitions=settings.events_partitions,
        replication_factor=settings.replication_factor,
        max_event_bytes=settings.max_event_bytes,
        data_dir=settings.data_dir / "processors",
        state_retention=state_retention(settings),
        state_memory_bytes=settings.state_memory_mb << 20,
        write_interval=settings.write_interval_ms / 1000,
    )


def changelog_specs(config: ProcessorConfig, settings: Settings) -> list[TopicSpec]:
    """The state stores' changelogs (processors/state_store.py): the runs' (one partition per
    events partition), the waits' and the triggers' (one per signals partition); compacted
    (each key's newest state is all that is read back)."""

    def spec(name: str, partitions_setting: str) -> TopicSpec:
        return TopicSpec(
            name=name,
            partitions=int(getattr(settings, partitions_setting)),
            partitions_setting=partitions_setting,
            replication_factor=settings.replication_factor,
            min_insync_replicas=settings.min_insync_replicas,
            # A run's state holds every event id of the run, a name's its waits: allow the
            # producer's largest request.
            configs={
                "cleanup.policy": "compact", "max.message.bytes": str(config.max_fetch_bytes)
            },
        )

    return [
        spec(config.runs_changelog, "events_partitions"),
        spec(config.waits_changelog, "signals_partitions"),
        spec(config.triggers_changelog, "signals_partitions"),
        spec(config.flow_control_changelog, "signals_partitions"),
    ]


def faust_topic_spec(config: ProcessorConfig, settings: Settings) -> TopicSpec:
    """Faust's leader topic as faust makes it (one partition, its configs the broker's), with
    Steplog's replication and min.insync.replicas, which faust has no setting for."""
    return TopicSpec(
        name=config.faust_leader_topic, partitions=1, partitions_setting=None,
        replication_factor=settings.replication_factor,
        min_insync_replicas=settings.min_insync_replicas,
    )


async def ensure_processors_topics(config: ProcessorConfig, settings: Settings) -> int:
    """Make the processors' own topics and warn about the replication of every topic; the
    replicas of faust's (the cluster's default when the settings name none: faust needs it)."""
    # The flow-control topic is the processors' own (processors/flow_gate.py): made here with the
    # changelogs, so that processors upgraded onto a cluster without it do not stall sending to it.
    specs = topic_specs(settings)
    own = [spec for spec in specs if spec.name == settings.topics.flow_control]
    own += [*changelog_specs(config, settings), faust_topic_spec(config, settings)]
    # Topics with other replicas than asked: a warning, not a refusal to run (`steplog topics
    # ensure` fails over them and says how to align them).
    reports = await ensure_topics(settings.kafka_bootstrap, own,
                                  on_replica_mismatch=ReplicaMismatchPolicy.WARN)
    ensured = {report.name for report in reports}
    await check_replication(settings.kafka_bootstrap,
                            [spec for spec in specs if spec.name not in ensured])
    return next(r.replicas for r in reports if r.name == config.faust_leader_topic)


@dataclass
class StackHooks:
    """Things to run inside the worker once it is up (the demo uses it)."""

    on_ready: Callable[[], None] | None = None


def run_processors(
    settings: Settings, *, sql_port: int | None, hooks: StackHooks | None = None,
    supervised: bool = False,
) -> None:
    """Run the processors in the foreground until SIGINT/SIGTERM (raises SystemExit then).

    `supervised`: run by `steplog dev`, which holds the stack lock (steplog/server/stack_lock.py)
    already; alone, the processors take it before they open the engine's files."""
    tune_gc_for_batches()
    config = processor_config(settings)
    signer = record_signer(settings)
    enforced = signatures_enforced(settings)
    if enforced and signer is None:
        raise SettingsError(
            "the processors check signed records (STEPLOG_RECORD_SIGNATURES=auto on a secured "
            "Kafka connection, or required) but have no key to sign their own writes with: "
            "set STEPLOG_API_KEY to an admin key (or one covering every project)"
        )
    config.data_dir.mkdir(parents=True, exist_ok=True)
    path = chdb_path(settings.clickhouse_dsn)
    if path is not None and not supervised:
        claim_stack(settings, path, sql_port or 0)
    replicas = asyncio.run(ensure_processors_topics(config, settings))
    config = dataclasses.replace(config, replication_factor=replicas)
    # Bound before the consumers join: their client id names the port (processors/membership.py).
    health_socket = bind_health_socket(settings.health_host, settings.health_port)
    membership = claim_membership(
        config.data_dir, health_socket.getsockname()[1] if health_socket else 0
    )
    config = dataclasses.replace(config, membership=membership)
    store: StoreProcess | None = None
    writer: BatchWriter
    if path is not None:
        # The embedded engine gets a process of its own (migrations, inserts, the SQL endpoint):
        # in this one its inserts and queries held the GIL and stalled every batch and resume.
        store = StoreProcess(settings.clickhouse_dsn, settings.clickhouse_database)
        flows = store.start()
        writer = store
    else:
        client = open_clickhouse(settings.clickhouse_dsn)
        migrate(client, settings.clickhouse_database)
        flows = load_flows(client, settings.clickhouse_database)
        writer = ProjectionWriter(client, settings.clickhouse_database)
    # Where signatures are enforced, the processors check every record against the keys topic,
    # followed from here (steplog/server/key_ring.py); they sign what they write themselves.
    keys = KeyRingFollower(settings).start() if enforced else None
    try:
        if keys is not None:
            keys.wait_caught_up(_KEYS_WAIT_S)
        app, host = create_processor_app(config, writer, flows, keys=keys, signer=signer)
        if health_socket is not None:
            _serve_health_from(app, ProcessHealth(settings, host.write_health),
                               health_socket)
        ready = hooks.on_ready if hooks is not None else None
        if store is not None:
            # Ready once the store's SQL endpoint answers: the demo queries it at once.
            _run_store_from(app, store, settings, sql_port, ready)
        elif ready is not None:
            announce = ready

            @app.task  # type: ignore[untyped-decorator]
            async def announce_ready() -> None:
                announce()

        worker = faust.Worker(app, loglevel="WARN", quiet=True, redirect_stdouts=False)
        worker.spinner = None  # a terminal spinner garbles logs written to files
        # On the logger that logs it: a parent logger's filter never sees its children's records.
        logging.getLogger("aiokafka.consumer.group_coordinator").addFilter(_drop_startup_noise)
        worker.execute_from_commandline()
    finally:
        # After the worker: its tasks are stopped, so the last write has been answered (a
        # write still in a thread holds the store's pipe, and stop() waits for it).
        if store is not None:
            store.stop()
        if keys is not None:
            keys.stop()


def claim_stack(settings: Settings, path: Path, sql_port: int) -> None:
    """Take the engine's stack lock for this stack (waiting, bounded, for a command using the
    files), so that commands wait for our SQL endpoint instead of opening the files."""
    claim_for_stack(
        path, sql_port=sql_port, wait=settings.stack_wait_s,
        waiting=lambda holder: log.warning(
            "waiting up to %gs for %s to finish with the embedded ClickHouse data at %s",
            settings.stack_wait_s, holder.describe(), path),
    )


def _serve_health_from(app: faust.App, health: ProcessHealth, sock: socket.socket) -> None:
    @app.task  # type: ignore[untyped-decorator]
    async def serve_health() -> None:
        await health.serve(sock)

    @app.task  # type: ignore[untyped-decorator]
    async def sample_lag() -> None:
        await health.sample_lag()


def _drop_startup_noise(record: logging.LogRecord) -> bool:
    # A fresh broker takes a moment to elect the group coordinator; aiokafka reports every
    # poll of that moment, which reads like a failure and is not one.
    message = record.getMessage()
    # Not "Heartbeat session expired - marking coordinator dead": that one is a real problem.
    return not ("GroupCoordinatorNotAvailable" in message
                or message.startswith("Marking the coordinator dead"))


def _run_store_from(
    app: faust.App, store: StoreProcess, settings: Settings, sql_port: int | None,
    ready: Callable[[], None] | None,
) -> None:
    # A dead store takes the SQL endpoint with it and fails every write: the task's error
    # crashes the app, and the processors exit saying so rather than retry forever.
    @app.task  # type: ignore[untyped-decorator]
    async def watch_store() -> None:
        await store.watch()

    if sql_port is None:
        if ready is not None:
            announce = ready

            @app.task  # type: ignore[untyped-decorator]
            async def announce_ready() -> None:
                announce()

        return

    # Once the worker runs (its signal handlers too): whoever waits for the endpoint to answer
    # (the tests, the benchmarks, `steplog status`) then finds the processors up. A port in
    # use is an error of the task, which stops the processors saying so.
    @app.task  # type: ignore[untyped-decorator]
    async def serve_sql() -> None:
        await asyncio.get_running_loop().run_in_executor(
            None, store.serve_sql, sql_port, settings
        )
        log.warning("SQL endpoint on http://127.0.0.1:%d (ClickHouse HTTP interface)", sql_port)
        if ready is not None:
            ready()


def logged_in_to_local_broker(settings: Settings) -> Settings:
    """The settings of `steplog dev` on a secured local broker (STEPLOG_BROKER_SECURE) that
    configure no Kafka login: every client of the stack (processors, web service, demo, the
    children it starts) logs in as the broker's admin, whose credentials the broker keeps in
    its data dir (drawn here before its first start when there are none yet, as it would)."""
    if not settings.broker_secure or settings.kafka_security_protocol != "PLAINTEXT":
        return settings
    data_dir = LocalBroker.from_settings(settings).data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    admin = load_or_create_admin(data_dir)
    secured = settings.model_copy(update={
        "kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": MECHANISM,
        "kafka_sasl_username": admin.username, "kafka_sasl_password": admin.password,
    })
    # A client made from a bare bootstrap address takes this process's STEPLOG_KAFKA_*
    # environment (steplog/kafka.py `resolve`): the same login for those.
    os.environ.update({name: value for name, value in child_environment(secured).items()
                       if name.startswith("STEPLOG_KAFKA_")})
    return secured


def run_dev(
    settings: Settings, *, sql_port: int, hooks: StackHooks | None = None, brokers: int = 1
) -> None:
    """The whole local stack in the foreground; Ctrl-C stops everything it started. The
    processors run in a child process, restarted when they die (steplog/server/supervisor.py);
    the web service (dashboard, API, ingestion) on a thread of this one, on
    STEPLOG_API_PORT. `brokers` > 1: a local cluster of that many nodes (broker/cluster.py),
    whose every node settings.kafka_bootstrap lists."""
    path = chdb_path(settings.clickhouse_dsn)
    if path is not None:
        # First of all: a command run while the stack starts waits for its SQL endpoint.
        claim_stack(settings, path, sql_port)
    broker = local_kafka(settings, brokers)
    started_here = not broker.status().running
    broker.start()
    log.warning("Kafka on %s", broker.bootstrap)
    try:
        asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
        _ensure_admin_key(settings)
        # The web service's alert evaluator joins a group too, on the broker just started.
        logging.getLogger("aiokafka.consumer.group_coordinator").addFilter(_drop_startup_noise)
        web = WebServiceThread(settings, host="127.0.0.1", port=settings.api_port,
                               sql_port=sql_port)
        web.start()
        log.warning("dashboard and API on %s", web.url)
        if settings.health_port:
            log.warning("metrics on %s/metrics (a key of every project) and the processors' on "
                        "http://%s:%d/metrics", web.url, settings.health_host,
                        settings.health_port)
        try:
            ProcessorsSupervisor(settings, sql_port=sql_port).run(
                hooks.on_ready if hooks is not None else None
            )
        finally:
            web.stop()
    finally:
        if started_here:
            broker.stop()


def _ensure_admin_key(settings: Settings) -> None:
    """Nothing is open without a key: make sure the local admin key exists (in the data dir,
    for the CLI and the demo), and show a new one once."""
    secret = ensure_admin_key(settings)
    path = admin_key_path(settings)
    if secret is None:
        log.warning("admin key in %s", path)
    else:
        # Printed, not logged: shown this once (log handlers may ship their records elsewhere).
        print(f"new admin key (shown once; saved in {path}, mode 0600): {secret}", flush=True)
