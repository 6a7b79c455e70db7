"""Creating Steplog's topics with the shapes the settings ask for (`steplog topics ensure`).

Idempotent: missing topics are created; existing ones keep their data and get their configs
brought in line (other dynamic configs an operator set are kept). Partition counts are never
changed automatically: adding partitions re-maps keys to partitions, and per-run ordering (key =
run_id) would break for runs in flight, so a mismatch is an error that says what to do.

Replication follows the cluster (steplog/replication.py). A topic with other replica counts than
asked is not reassigned unasked: a reassignment copies every partition's whole log to its new
brokers, unthrottled, and `ensure_topics` also runs at each start of the processors and of
`steplog dev`; so `steplog topics ensure` fails naming the topics, the counts and the command
that aligns them (`steplog topics ensure --reassign`, through Kafka's AlterPartitionReassignments),
and the processors start with a warning. Replicas are aligned before configs: a topic must not
get a `min.insync.replicas` above the replicas it has (every acks=all write would fail).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.protocol.admin import AlterPartitionReassignmentsRequest
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_delay,
    wait_exponential,
)

from steplog.errors import TopicError
from steplog.kafka import Kafka, admin_client, start
from steplog.replication import (
    REASSIGN_COMMAND,
    ReplicaMismatch,
    reassignment,
    replica_counts,
    replica_mismatches,
    replication_warnings,
    resolve_spec,
)
from steplog.settings import Settings, env_name

log = logging.getLogger("steplog.topics")

_TOPIC_ALREADY_EXISTS = 36
_DYNAMIC_TOPIC_CONFIG = 1  # DescribeConfigs config_source for a per-topic override
# Kafka counts record-batch overhead against max.message.bytes; leave room above the largest
# event so that an event at exactly the limit still fits in a batch of one.
_BATCH_HEADROOM_BYTES = 64 * 1024


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    partitions_setting: str | None
    """The settings field that chooses the partition count (for error messages); None: the
    count is Steplog's own."""
    replication_factor: int | None
    """None: the cluster's default.replication.factor (read from a broker by `ensure_topics`)."""
    configs: dict[str, str] = field(default_factory=dict)
    min_insync_replicas: int | None = None
    """None: one less than the replicas, at least 1 (steplog/replication.py)."""


class TopicOutcome(StrEnum):
    CREATED = "created"
    UNCHANGED = "unchanged"
    CONFIGS_UPDATED = "configs updated"
    REPLICAS_REASSIGNED = "replicas reassigned"


class ReplicaMismatchPolicy(StrEnum):
    """What `ensure_topics` does about existing topics with other replica counts than asked."""

    FAIL = "fail"
    """Raise TopicError naming them and the command that aligns them (`topics ensure`)."""
    REASSIGN = "reassign"
    """Reassign their partitions and wait until the new replicas are in sync (`--reassign`)."""
    WARN = "warn"
    """Log a warning and go on (the processors' start: running beats refusing to)."""


@dataclass(frozen=True)
class TopicReport:
    name: str
    partitions: int
    replicas: int
    outcome: TopicOutcome


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics with partitions, replication and configs from the settings."""
    names = settings.topics
    message_bytes = str(settings.max_event_bytes + _BATCH_HEADROOM_BYTES)

    def spec(
        name: str, setting: str, retention_ms: int, cleanup: str = "delete", signed: bool = False,
        log_time: bool = False,
    ) -> TopicSpec:
        configs = {
            "cleanup.policy": cleanup,
            "retention.ms": str(retention_ms),
            "max.message.bytes": message_bytes,
        }
        if signed or log_time:
            # Signed records are judged on the broker's time (processors/record_checks.py): a
            # producer cannot backdate one past its key's revoke, and replay sees what live saw.
            # Flow control's windows go by it too (processors/fold/flow_control.py).
            configs["message.timestamp.type"] = "LogAppendTime"
        return TopicSpec(
            name=name,
            partitions=int(getattr(settings, setting)),
            partitions_setting=setting,
            replication_factor=settings.replication_factor,
            min_insync_replicas=settings.min_insync_replicas,
            configs=configs,
        )

    log_retention = settings.log_retention_ms
    return [
        spec(names.events, "events_partitions", log_retention, signed=True),
        spec(names.signals, "signals_partitions", log_retention, signed=True),
        # As many partitions as the signals: both spread keys of the same kinds of traffic.
        spec(names.flow_control, "signals_partitions", log_retention, log_time=True),
        spec(names.commands, "commands_partitions", log_retention),
        # Pinned runs' commands: kept as long as the log, so a pin to a runner that comes late
        # still finds its start (schemas/topics.py).
        spec(names.runner_commands, "commands_partitions", log_retention),
        spec(names.dlq, "dlq_partitions", settings.dlq_retention_ms),
        # Compacted: only the latest definition of each flow matters, forever.
        spec(names.flows, "flows_partitions", -1, cleanup="compact", signed=True),
        # Compacted, forever: a key's newest record (revoked or not) is all that counts. One
        # partition: every process reads the whole topic (steplog/server/key_ring.py).
        TopicSpec(
            name=names.keys, partitions=1, partitions_setting=None,
            replication_factor=settings.replication_factor,
            min_insync_replicas=settings.min_insync_replicas,
            configs={"cleanup.policy": "compact", "retention.ms": "-1",
                     "max.message.bytes": message_bytes,
                     # A revoke takes effect at its log time (steplog/server/key_ring.py).
                     "message.timestamp.type": "LogAppendTime"},
        ),
        # Firing and resolved alerts, kept as the log keeps events. One partition: its holder
        # in the alerts group is the one evaluator (steplog/server/alert_evaluator.py).
        TopicSpec(
            name=alerts_topic(settings), partitions=1, partitions_setting=None,
            replication_factor=settings.replication_factor,
            min_insync_replicas=settings.min_insync_replicas,
            configs={"cleanup.policy": "delete", "retention.ms": str(log_retention),
                     "max.message.bytes": message_bytes},
        ),
    ]


def alerts_topic(settings: Settings) -> str:
    """`<prefix>alerts`."""
    return f"{settings.topic_prefix}alerts"


async def ensure_topics(
    bootstrap: Kafka, specs: list[TopicSpec], *, timeout: float = 30.0,
    on_replica_mismatch: ReplicaMismatchPolicy = ReplicaMismatchPolicy.FAIL,
) -> list[TopicReport]:
    """Create missing topics and align replicas (as `on_replica_mismatch` says) and configs of
    existing ones; raise TopicError on a partition-count mismatch or a broker refusal; log a
    warning when topics have fewer replicas than asked, or one on a cluster of several
    brokers. Returns once every topic is usable."""
    admin = admin_client(bootstrap, client_id="steplog-topics")
    await start(admin, bootstrap)
    try:
        brokers = await _broker_ids(admin)
        specs = await _resolved(admin, specs, brokers)
        response = await admin.create_topics(
            [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.configs)
             for s in specs]
        )
        created = set()
        for result in response.to_object()["topic_errors"]:
            if result["error_code"] == 0:
                created.add(result["topic"])
            elif result["error_code"] != _TOPIC_ALREADY_EXISTS:
                raise TopicError(
                    f"cannot create topic {result['topic']!r}: {result['error_message']} "
                    f"(Kafka error {result['error_code']})"
                )
        layouts = await _layouts_once_usable(admin, [s.name for s in specs], timeout)
        existing = [s for s in specs if s.name not in created]
        reports = [TopicReport(s.name, s.partitions, s.replication_factor or 0,
                               TopicOutcome.CREATED)
                   for s in specs if s.name in created]
        if existing:
            reports += await _align_existing(
                admin, existing, layouts, brokers, on_replica_mismatch, timeout
            )
        for warning in replication_warnings(specs, layouts, len(brokers)):
            log.warning(warning)
        return sorted(reports, key=lambda r: [s.name for s in specs].index(r.name))
    finally:
        await admin.close()


async def check_replication(bootstrap: Kafka, specs: list[TopicSpec]) -> None:
    """Log `ensure_topics`' replication warnings about the existing topics of `specs`, changing
    nothing (the processors' start, for the topics `steplog topics ensure` makes)."""
    admin = admin_client(bootstrap, client_id="steplog-topics")
    await start(admin, bootstrap)
    try:
        brokers = await _broker_ids(admin)
        specs = await _resolved(admin, specs, brokers)
        layouts = await _layouts(admin, [s.name for s in specs])
    finally:
        await admin.close()
    for warning in replication_warnings(specs, layouts, len(brokers)):
        log.warning(warning)


_Layouts = dict[str, dict[int, list[int]]]
"""Topic -> partition -> the ids of the brokers holding its replicas (the first preferred)."""


async def _layouts(admin: AIOKafkaAdminClient, names: list[str]) -> _Layouts:
    """The replicas of the partitions of those of `names` that exist and have partitions."""
    described = await admin.describe_topics(names)
    return {t["topic"]: {p["partition"]: list(p["replicas"]) for p in t["partitions"]}
            for t in described if not t["error_code"] and t["partitions"]}


async def _layouts_once_usable(
    admin: AIOKafkaAdminClient, names: list[str], timeout: float
) -> _Layouts:
    """Partitions and their replicas once every topic shows its partitions in the metadata.

    A topic just created (here or by a concurrent caller) exists before its partitions appear
    in the broker's metadata; callers of `ensure_topics` expect usable topics, so wait.
    """

    async def read() -> _Layouts:
        return await _layouts(admin, names)

    layouts = await _read_until(read, lambda layouts: all(n in layouts for n in names), timeout)
    missing = sorted(name for name in names if name not in layouts)
    if missing:
        raise TopicError(f"topics {missing} have no partitions after {timeout:.0f}s")
    return layouts


async def _broker_ids(admin: AIOKafkaAdminClient) -> list[int]:
    cluster = await admin.describe_cluster()
    return sorted(int(broker["node_id"]) for broker in cluster["brokers"])


async def _resolved(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], brokers: list[int]
) -> list[TopicSpec]:
    """`specs` with their replicas and min.insync.replicas (steplog/replication.py)."""
    default = 0
    if any(s.replication_factor is None for s in specs):
        default = await _default_replication(admin, brokers[0])
    return [resolve_spec(s, default) for s in specs]


async def _default_replication(admin: AIOKafkaAdminClient, broker: int) -> int:
    """The cluster's default.replication.factor, as `broker` has it (brokers of a cluster
    share it; a broker where it differs is a misconfiguration Kafka does not prevent)."""
    name = "default.replication.factor"
    (response,) = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.BROKER, str(broker), {name: None})]
    )
    for resource in response.to_object()["resources"]:
        if resource["error_code"]:
            raise TopicError(
                f"cannot read {name} of broker {broker}: {resource['error_message']} (Kafka "
                f"error {resource['error_code']}); set STEPLOG_REPLICATION_FACTOR, or allow "
                "this user DescribeConfigs on the cluster"
            )
        for entry in resource["config_entries"]:
            if entry["config_names"] == name:
                return int(entry["config_value"])
    raise TopicError(f"broker {broker} does not say its {name}: set STEPLOG_REPLICATION_FACTOR")


_Reading = TypeVar("_Reading")


async def _read_until(
    read: Callable[[], Awaitable[_Reading]],
    done: Callable[[_Reading], bool],
    timeout: float,
) -> _Reading:
    """`read()` until `done` holds of what it read (20 ms apart, doubling up to 1 s) or
    `timeout` seconds have passed; the last reading either way. `read` must be an async def:
    tenacity awaits only those (a lambda returning a coroutine would not be awaited)."""

    def last_reading(state: RetryCallState) -> _Reading:
        assert state.outcome is not None
        reading: _Reading = state.outcome.result()
        return reading

    retrying = AsyncRetrying(
        retry=retry_if_result(lambda reading: not done(reading)),
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=0.02, max=1.0),
        retry_error_callback=last_reading,
    )
    reading: _Reading = await retrying(read)
    return reading


async def _align_existing(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], layouts: _Layouts, brokers: list[int],
    on_replica_mismatch: ReplicaMismatchPolicy, timeout: float,
) -> list[TopicReport]:
    for spec in specs:
        actual = len(layouts[spec.name])
        if actual == spec.partitions:
            continue
        if spec.partitions_setting is None:
            raise TopicError(
                f"topic {spec.name!r} has {actual} partitions but Steplog makes it with "
                f"{spec.partitions}: use a new STEPLOG_TOPIC_PREFIX, or delete the topic and "
                "run `steplog topics ensure` again"
            )
        setting = env_name(spec.partitions_setting)
        raise TopicError(
            f"topic {spec.name!r} has {actual} partitions but {setting} asks for "
            f"{spec.partitions}. Steplog does not change partition counts (keys would move "
            f"and per-run order break): set {setting}={actual}, or use a new "
            "STEPLOG_TOPIC_PREFIX and replay into it"
        )
    specs, reassigned = await _align_replicas(
        admin, specs, layouts, brokers, on_replica_mismatch, timeout
    )
    current = await _dynamic_configs(admin, [s.name for s in specs])
    stale = _differing(specs, current)
    if stale:
        # AlterConfigs replaces a topic's whole set of overrides, so send ours merged over the
        # ones already there to keep an operator's own settings.
        responses = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, s.name, {**current[s.name], **s.configs})
             for s in stale]
        )
        for response in responses:
            for resource in response.to_object()["resources"]:
                if resource["error_code"]:
                    raise TopicError(
                        f"cannot change configs of topic {resource['resource_name']!r}: "
                        f"{resource['error_message']} (Kafka error {resource['error_code']})"
                    )
        await _until_configs_in_effect(admin, stale, timeout)
    stale_names = {s.name for s in stale}
    return [
        TopicReport(
            s.name,
            s.partitions,
            min(replica_counts(layouts[s.name])),
            TopicOutcome.REPLICAS_REASSIGNED if s.name in reassigned
            else TopicOutcome.CONFIGS_UPDATED if s.name in stale_names
            else TopicOutcome.UNCHANGED,
        )
        for s in specs
    ]


async def _align_replicas(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], layouts: _Layouts, brokers: list[int],
    policy: ReplicaMismatchPolicy, timeout: float,
) -> tuple[list[TopicSpec], set[str]]:
    """Act on the topics whose replica counts differ from `specs`' as `policy` says. Returns
    the specs whose configs to align (under WARN a topic's min.insync.replicas goes by the
    replicas it has) and the names of the topics reassigned (`layouts` updated)."""
    mismatches = replica_mismatches(specs, layouts)
    if not mismatches:
        return specs, set()
    if policy is ReplicaMismatchPolicy.FAIL:
        raise TopicError(
            "; ".join(m.describe() for m in mismatches)
            + f". Run `{REASSIGN_COMMAND}` (with the same STEPLOG_* settings) to reassign their "
            "partitions; it copies each partition to its new brokers, so it is not done unasked"
        )
    if policy is ReplicaMismatchPolicy.WARN:
        have = {m.topic: min(m.actual) for m in mismatches}
        return [resolve_spec(dataclasses.replace(s, replication_factor=have[s.name]), 0)
                if s.name in have else s for s in specs], set()
    layouts.update(await _reassign(admin, mismatches, layouts, brokers, timeout))
    return specs, {m.topic for m in mismatches}


async def _reassign(
    admin: AIOKafkaAdminClient, mismatches: list[ReplicaMismatch], layouts: _Layouts,
    brokers: list[int], timeout: float,
) -> _Layouts:
    """Move the mismatched topics' partitions onto their wanted replicas (Kafka's
    AlterPartitionReassignments) and wait until every new replica is in sync; their layouts."""
    load = Counter(b for layout in layouts.values() for replicas in layout.values()
                   for b in replicas)
    plans = {m.topic: reassignment(layouts[m.topic], m.wanted, brokers, load)
             for m in mismatches}
    request = AlterPartitionReassignmentsRequest(
        int(timeout * 1000),
        [(topic, [(p, replicas, {}) for p, replicas in plan.items()], {})
         for topic, plan in plans.items()],
        {},
    )
    # aiokafka's protocol has the request but its admin client no method for it: sent the way
    # the client sends its own controller requests.
    answer = (await admin._send_to_controller(request)).to_object()
    if answer["error_code"]:
        raise TopicError(f"cannot reassign partitions: {answer['error_message']} "
                         f"(Kafka error {answer['error_code']})")
    refusals = [
        f"{topic['name']}[{p['partition_index']}]: {p['error_message']} "
        f"(Kafka error {p['error_code']})"
        for topic in answer["responses"] for p in topic["partitions"] if p["error_code"]
    ]
    if refusals:
        raise TopicError(f"cannot reassign partitions: {'; '.join(refusals)}")

    async def read() -> dict[str, list[dict[str, Any]]]:
        described = await admin.describe_topics(list(plans))
        return {t["topic"]: t["partitions"] for t in described}

    def in_sync(described: dict[str, list[dict[str, Any]]]) -> bool:
        # While a reassignment runs, `replicas` holds the old and the new ones together.
        return all(
            p["partition"] not in plans[topic]
            or (set(p["replicas"]) == set(plans[topic][p["partition"]])
                and set(p["isr"]) >= set(p["replicas"]))
            for topic, partitions in described.items() for p in partitions
        )

    described = await _read_until(read, in_sync, timeout)
    if not in_sync(described):
        raise TopicError(
            f"reassignment of topics {sorted(plans)} still in progress after {timeout:.0f}s "
            f"(Kafka goes on copying): run `{REASSIGN_COMMAND}` again to wait for it"
        )
    return {topic: {p["partition"]: list(p["replicas"]) for p in partitions}
            for topic, partitions in described.items()}


async def _until_configs_in_effect(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], timeout: float
) -> None:
    """Wait until the broker describes `specs`' configs. The controller acknowledges a change
    before the broker applies it from the metadata log, and a caller of `ensure_topics` (or
    the next one) must find the topics as asked."""

    async def read() -> dict[str, dict[str, str]]:
        return await _dynamic_configs(admin, [s.name for s in specs])

    current = await _read_until(read, lambda current: not _differing(specs, current), timeout)
    if pending := sorted(s.name for s in _differing(specs, current)):
        raise TopicError(f"configs of topics {pending} not in effect after {timeout:.0f}s")


def _differing(specs: list[TopicSpec], current: dict[str, dict[str, str]]) -> list[TopicSpec]:
    """The specs whose configs the topics' `current` overrides do not (all) have."""
    return [s for s in specs if any(current[s.name].get(k) != v for k, v in s.configs.items())]


async def _dynamic_configs(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
    )
    configs: dict[str, dict[str, str]] = {name: {} for name in names}
    for response in responses:
        resource: dict[str, Any]
        for resource in response.to_object()["resources"]:
            if resource["error_code"]:
                raise TopicError(
                    f"cannot read configs of topic {resource['resource_name']!r}: "
                    f"{resource['error_message']}"
                )
            configs[resource["resource_name"]] = {
                entry["config_names"]: entry["config_value"]
                for entry in resource["config_entries"]
                if entry["config_source"] == _DYNAMIC_TOPIC_CONFIG
            }
    return configs


async def topic_partitions(bootstrap: Kafka, topic: str) -> list[int]:
    """The partition numbers of a topic; TopicError when it does not exist."""
    admin = admin_client(bootstrap)
    await start(admin, bootstrap)
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] or not described["partitions"]:
        raise TopicError(f"topic {topic!r} does not exist (run `steplog topics ensure`)")
    return sorted(p["partition"] for p in described["partitions"])
