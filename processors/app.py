"""The processors' app: the fold and the workflow engine around it, in one process.

Consumers and tasks (see docs/processors.md for the whole protocol):

- `fold_events` (a task hosting a `StatefulConsumer`: a plain aiokafka consumer on the events
  topic, group `ProcessorConfig.app_id`, one batch at a time): decode, fold, project,
  dead-letter, carry out the fold's engine effects, keep run states (processors/fold_host.py,
  states in a `StateStore` of `RunState`);
- `resolve_signals` (a task hosting another `StatefulConsumer`: the signals topic, group
  `ProcessorConfig.signals_group`): triggers and waits per event name
  (processors/signals_host.py, logic in processors/fold/signals.py, states in two
  `StateStore`s);
- `follow_flows` (a task, in every process: the whole flows topic, no group; the topic's one
  reader, processors/definitions.py): flow and workflow definitions to the fold and the
  registry, flow definitions to the `flows` table, unusable messages to the dead letters
  (processors/flows_host.py);
- `control_flow` (a task hosting another `StatefulConsumer`: the flow-control topic, group
  `ProcessorConfig.flow_control_group`): starts held back by flow control, per key
  (processors/flow_control_host.py, logic in processors/fold/flow_control.py), and
  `tick_flow_control` (a task): their keys' due times;
- `fire_timers` (a task): the timer service (processors/timer_service.py), rebuilt from the
  run states each time the run store has recovered partitions;
- `mirror_dead_letters` (a task: a consumer of the DLQ topic, group `dead_letters_group`):
  each dead letter as a row of the `dead_letters` table, which the dashboard reads
  (processors/dead_letters_host.py).

The faust app hosts them all: its worker runs the tasks, and stops them on SIGINT/SIGTERM; its
producer sends every message. Nothing is consumed through faust (docs/processors.md says why).
Steps 5-7 of a batch run in the background while the next batches go through 1-4: their
resumes do not wait for an insert (with the embedded engine it runs in another process,
steplog/server/store_process.py). A run's (or a name's) state is never updated by two batches
at once, and a partition's messages are handled in log order.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import faust
from faust.types.auth import CredentialsT

from steplog.kafka import FAILOVER_OPTIONS, FAILOVER_PRODUCER_OPTIONS, KafkaSecurity, resolve
from steplog.metrics import metrics
from steplog.projections.writer import BatchWriter
from steplog.schemas.flows import FlowDefinition
from steplog.schemas.record_signing import RecordSigner, signature_headers

from .config import ProcessorConfig
from .dead_letters_host import DeadLettersHost
from .definitions import DefinitionsFollower
from .dispatch import Dispatcher, SendFunction
from .flow_control_host import FlowControlHost
from .flows_host import FlowsHost
from .fold.flow_control import FlowKeyState
from .fold.signals import NameTriggers, NameWaits
from .fold_host import FoldHost
from .projection_writes import ProjectionWrites
from .record_checks import KeyLookup, RecordChecks
from .registry import WorkflowRegistry
from .signals_host import SignalsHost
from .stateful_consumer import StatefulConsumer

__all__ = ["create_processor_app", "faust_credentials"]


def create_processor_app(
    config: ProcessorConfig,
    writer: BatchWriter,
    flows: list[FlowDefinition],
    *,
    keys: KeyLookup | None = None,
    signer: RecordSigner | None = None,
) -> tuple[faust.App, FoldHost]:
    """The faust app with its tasks; `flows` are the flow definitions of the `flows` table (the
    fold also waits until it has followed the flows topic to its end: `follow_flows`).

    `keys`: check the records of the events, signals and flows topics against them before
    anything folds them (processors/record_checks.py; None: not enforced). `signer`: the
    process's own key, which signs what it writes to those topics (None: unsigned)."""
    if config.replication_factor is None:
        raise ValueError("faust needs a replication factor: resolve the cluster's default first")
    app = faust.App(
        config.faust_app_id,
        broker=f"kafka://{config.bootstrap}",
        # Faust makes its consumer and producer itself, with its own names for the security.
        broker_credentials=faust_credentials(resolve(config.bootstrap).security),
        store="memory://",
        datadir=str(config.data_dir),
        topic_partitions=config.events_partitions,
        # Faust has no setting for min.insync.replicas: its one topic, the leader topic, is made
        # before it starts, with Steplog's replication (steplog/server/stack.py).
        topic_replication_factor=config.replication_factor,
        producer_acks=-1,
        web_enabled=False,
        autodiscover=False,
        producer_max_request_size=config.max_event_bytes * 2,
        # The producer sends what a batch asks for at once: resumes wait on it.
        producer_linger=0.0,
        # Faust makes its producer itself, not through steplog.kafka: the failover settings
        # every client of ours has (steplog.kafka; README, "Failover"). Its retry backoff is
        # aiokafka's default, 100 ms, already theirs. The request timeout is also when a batch
        # that could not be delivered expires (faust's default: 20 minutes); the dispatcher
        # then sends it again (processors/dispatch.py), so a broker that vanished costs 5 s.
        # The producer is not idempotent, so no sequence state can be lost.
        producer_metadata_max_age_ms=FAILOVER_OPTIONS["metadata_max_age_ms"],
        producer_request_timeout=FAILOVER_PRODUCER_OPTIONS["request_timeout_ms"] / 1000,
        # Faust's consumer still joins the app's group (for its leader topic), and its worker
        # waits for the group before it runs any task: as a static member, a restart does not
        # wait out the dead member's session.
        consumer_group_instance_id=config.membership.instance_id,
    )

    signed_topics = {config.topics.events, config.topics.signals, config.topics.flows}

    async def send(topic: str, key: bytes | None, value: bytes) -> Any:
        # Straight to the producer: faust's topic.send would attach the message to the current
        # stream event and send it only when that event is acknowledged, after the batch.
        headers = signature_headers(signer, topic, value) if topic in signed_topics else None
        return await app.producer.send(topic, key, value, None, None, headers)

    dispatcher = Dispatcher(
        config.topics, cast(SendFunction, send), WorkflowRegistry(),
        max_bytes=config.max_event_bytes,
    )
    writes = ProjectionWrites(writer, dispatcher, config.topics.dlq)
    runs = config.run_store()
    checks = RecordChecks(keys) if keys is not None else None
    host = FoldHost(config, writes, runs, dispatcher, checks=checks)
    host.learn(flows)
    # Set once the definitions the flows topic held at start-up are learned: the fold and the
    # timers wait for it (processors/definitions.py).
    definitions_known = asyncio.Event()
    flows_host = FlowsHost(config, writes, host.learn, definitions_known, checks)
    events = StatefulConsumer(
        bootstrap=config.bootstrap, group_id=config.app_id, topic=config.topics.events,
        stores=[runs], process=host.process_events, write=host.write_rows,
        recovered=host.recovered, max_records=config.batch_size,
        max_fetch_bytes=config.max_fetch_bytes, write_interval=config.write_interval,
        membership=config.membership,
    )
    waits = config.state_store(config.waits_changelog, NameWaits.from_bytes)
    # Counted at each scrape, on the loop between batches: a decode per event name held.
    metrics().runs_waiting.set_function(lambda: sum(len(held.waits) for _, held in waits.items()))
    triggers = config.state_store(config.triggers_changelog, NameTriggers.from_bytes)
    signals_host = SignalsHost(config, waits, triggers, dispatcher, checks=checks)
    signals = StatefulConsumer(
        bootstrap=config.bootstrap, group_id=config.signals_group, topic=config.topics.signals,
        stores=[waits, triggers], process=signals_host.process_signals,
        max_records=config.batch_size, max_fetch_bytes=config.max_fetch_bytes,
        write_interval=config.write_interval, membership=config.membership,
    )

    flow_states = config.state_store(config.flow_control_changelog, FlowKeyState.from_bytes)
    flow_host = FlowControlHost(config, flow_states, writes)
    flow_control = StatefulConsumer(
        bootstrap=config.bootstrap, group_id=config.flow_control_group,
        topic=config.topics.flow_control, stores=[flow_states], process=flow_host.process_flow,
        write=flow_host.write_rows, recovered=flow_host.recovered, max_records=config.batch_size,
        max_fetch_bytes=config.max_fetch_bytes, write_interval=config.write_interval,
        membership=config.membership,
    )

    @app.task  # type: ignore[untyped-decorator]
    async def fold_events() -> None:
        await definitions_known.wait()
        await events.run()

    @app.task  # type: ignore[untyped-decorator]
    async def resolve_signals() -> None:
        await signals.run()

    @app.task  # type: ignore[untyped-decorator]
    async def control_flow() -> None:
        await flow_control.run()

    @app.task  # type: ignore[untyped-decorator]
    async def tick_flow_control() -> None:
        await flow_host.run_ticks()

    @app.task  # type: ignore[untyped-decorator]
    async def follow_flows() -> None:
        await DefinitionsFollower(
            config.bootstrap, config.topics.flows, flows_host.process_flows, definitions_known,
            max_fetch_bytes=config.max_fetch_bytes,
        ).run()

    @app.task  # type: ignore[untyped-decorator]
    async def fire_timers() -> None:
        await definitions_known.wait()
        await host.timers.run()

    @app.task  # type: ignore[untyped-decorator]
    async def mirror_dead_letters() -> None:
        await DeadLettersHost(config, writes).run()

    return app, host


def faust_credentials(security: KafkaSecurity) -> CredentialsT | None:
    """The faust credentials of what steplog.kafka gives every aiokafka client."""
    context = security.ssl_context()
    if security.sasl_mechanism is not None:
        # SASL over TLS when there is a context (faust picks SASL_SSL from it), else plaintext.
        password = security.password.get_secret_value() if security.password else None
        return faust.SASLCredentials(
            username=security.username, password=password, ssl_context=context,
            mechanism=security.sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None
