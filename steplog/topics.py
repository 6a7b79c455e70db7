"""Creating Steplog's topics with the shapes the settings ask for (`steplog topics ensure`).

Idempotent: missing topics are created; existing ones keep their data and get their configs
brought in line (other dynamic configs an operator set are kept). Partition counts are never
changed automatically: adding partitions re-maps keys to partitions, and per-run ordering (key =
run_id) would break for runs in flight, so a mismatch is an error that says what to do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_delay,
    wait_exponential,
)

from steplog.errors import TopicError
from steplog.kafka import Kafka, admin_client, start
from steplog.settings import Settings, env_name

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
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


class TopicOutcome(StrEnum):
    CREATED = "created"
    UNCHANGED = "unchanged"
    CONFIGS_UPDATED = "configs updated"


@dataclass(frozen=True)
class TopicReport:
    name: str
    partitions: int
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
            configs=configs,
        )

    log_retention = settings.log_retention_ms
    return [
        spec(names.events, "events_partitions", log_retention, signed=True),
        spec(names.signals, "signals_partitions", log_retention, signed=True),
        # As many partitions as the signals: both spread keys of the same kinds of traffic.
        spec(names.flow_control, "signals_partitions", log_retention, log_time=True),
        spec(names.commands, "commands_partitions", log_retention),
        spec(names.dlq, "dlq_partitions", settings.dlq_retention_ms),
        # Compacted: only the latest definition of each flow matters, forever.
        spec(names.flows, "flows_partitions", -1, cleanup="compact", signed=True),
        # Compacted, forever: a key's newest record (revoked or not) is all that counts. One
        # partition: every process reads the whole topic (steplog/server/key_ring.py).
        TopicSpec(
            name=names.keys, partitions=1, partitions_setting=None,
            replication_factor=settings.replication_factor,
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
            configs={"cleanup.policy": "delete", "retention.ms": str(log_retention),
                     "max.message.bytes": message_bytes},
        ),
    ]


def alerts_topic(settings: Settings) -> str:
    """`<prefix>alerts`."""
    return f"{settings.topic_prefix}alerts"


async def ensure_topics(
    bootstrap: Kafka, specs: list[TopicSpec], *, timeout: float = 30.0
) -> list[TopicReport]:
    """Create missing topics and align configs of existing ones; raise TopicError on a
    partition-count mismatch or a broker refusal. Returns once every topic is usable."""
    admin = admin_client(bootstrap, client_id="steplog-topics")
    await start(admin, bootstrap)
    try:
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
        partitions = await _partition_counts(admin, [s.name for s in specs], timeout)
        existing = [s for s in specs if s.name not in created]
        reports = [TopicReport(s.name, s.partitions, TopicOutcome.CREATED)
                   for s in specs if s.name in created]
        if existing:
            reports += await _align_existing(admin, existing, partitions, timeout)
        return sorted(reports, key=lambda r: [s.name for s in specs].index(r.name))
    finally:
        await admin.close()


async def _partition_counts(
    admin: AIOKafkaAdminClient, names: list[str], timeout: float
) -> dict[str, int]:
    """Partition counts once every topic shows its partitions in the metadata.

    A topic just created (here or by a concurrent caller) exists before its partitions appear
    in the broker's metadata; callers of `ensure_topics` expect usable topics, so wait.
    """

    async def read() -> dict[str, int]:
        described = await admin.describe_topics(names)
        return {t["topic"]: len(t["partitions"]) for t in described if not t["error_code"]}

    counts = await _read_until(read, lambda counts: all(counts.get(n) for n in names), timeout)
    missing = sorted(name for name in names if not counts.get(name))
    if missing:
        raise TopicError(f"topics {missing} have no partitions after {timeout:.0f}s")
    return counts


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
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], partitions: dict[str, int],
    timeout: float,
) -> list[TopicReport]:
    for spec in specs:
        actual = partitions[spec.name]
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
            TopicOutcome.CONFIGS_UPDATED if s.name in stale_names else TopicOutcome.UNCHANGED,
        )
        for s in specs
    ]


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
