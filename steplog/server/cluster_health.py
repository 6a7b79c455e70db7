"""The Kafka cluster as `steplog status` sees it: which brokers Steplog's topics need, which are
alive, and which partitions cannot take writes or have lost redundancy.

`read_cluster` takes one look, every answer bounded by STEPLOG_CHECK_TIMEOUT_S. Each bootstrap
host and each registered broker is asked directly (a connection and its ApiVersions handshake),
so that a broker killed a moment ago counts as dead at once, not only once the controller has
fenced it (broker.session.timeout.ms later), and so that a message names which hosts answered
and which did not. One broker that answered gives the metadata (registered brokers, each
partition's leader, replicas and ISR) and each topic's min.insync.replicas (DescribeConfigs).

`classify` judges a snapshot without I/O (the unit tests feed it snapshots):
- FAIL while writes may not be acknowledged or redundancy is lost right now: a broker dead
  (named in a replica list and not registered, or registered and not answering), a partition
  without a live leader, under min.insync.replicas, or under-replicated. Status stays FAIL after
  a dead broker returns until its replicas are back in the ISR: until then one more loss can
  lose acknowledged writes.
- WARN while redundancy is missing by configuration: one replica on a cluster of several
  brokers, or min.insync.replicas 1 with several replicas (a write acknowledged by one broker
  alone is lost with it).
"""

from __future__ import annotations

import asyncio
import enum
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.protocol.admin import DescribeConfigsRequest
from aiokafka.protocol.metadata import MetadataRequest

from steplog.kafka import KafkaAccess

# The group coordinators' topic: when its partitions have no leader, the processors can neither
# commit nor join their group, so status watches it with Steplog's own topics (and transactional
# producers' state, when a deployment uses them).
_INTERNAL_TOPICS = frozenset({"__consumer_offsets", "__transaction_state"})
_TOPIC_RESOURCE = 2  # DescribeConfigs' resource type of a topic
_MIN_INSYNC = "min.insync.replicas"
_NO_LEADER = -1


class Level(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    """What one aspect of the cluster looks like: `name` is the line `steplog status` prints."""

    name: str
    level: Level
    detail: str


@dataclass(frozen=True)
class HostAnswer:
    address: str
    """host:port, as configured (bootstrap) or advertised (a registered broker)."""
    error: str | None
    """Why it did not answer; None when it did."""


@dataclass(frozen=True)
class PartitionState:
    topic: str
    partition: int
    leader: int
    """The leader's broker id; -1 when there is none."""
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclass(frozen=True)
class ClusterMetadata:
    brokers: Mapping[int, HostAnswer]
    """Registered (unfenced) brokers by id, each with its answer to a direct connection."""
    topics: frozenset[str]
    """Every topic of the cluster (to name Steplog's missing ones)."""
    partitions: tuple[PartitionState, ...]
    """The partitions of the topics watched (Steplog's and the group coordinators')."""
    min_insync: Mapping[str, int]
    """min.insync.replicas of each topic watched whose configs could be read."""
    configs_error: str | None = None
    """Why the topics' configs could not be read; None when they were."""


@dataclass(frozen=True)
class ClusterSnapshot:
    bootstrap: tuple[HostAnswer, ...]
    metadata: ClusterMetadata | str
    """Why no metadata was read, when none was."""


def classify(snapshot: ClusterSnapshot, required_topics: Iterable[str]) -> list[Finding]:
    """The findings `kafka` (the bootstrap hosts and topics), `brokers`, `partitions` and
    `replication` (only `kafka` when no host answered)."""
    hosts = _hosts_finding(snapshot.bootstrap)
    metadata = snapshot.metadata
    if isinstance(metadata, str):
        if hosts.level is Level.FAIL:
            return [hosts]
        return [Finding("kafka", Level.FAIL, f"{hosts.detail}; but no metadata: {metadata}")]
    missing = sorted(set(required_topics) - metadata.topics)
    if missing:
        hosts = Finding("kafka", Level.FAIL,
                        f"missing topics {missing} (run `steplog topics ensure`); {hosts.detail}")
    elif hosts.level is Level.OK:
        hosts = Finding("kafka", Level.OK, f"{hosts.detail}, topics present")
    dead = _dead_brokers(metadata)
    return [
        hosts,
        _brokers_finding(metadata, dead),
        _partitions_finding(metadata, set(dead)),
        _replication_finding(metadata, set(dead)),
    ]


def _hosts_finding(bootstrap: tuple[HostAnswer, ...]) -> Finding:
    answered = [host.address for host in bootstrap if host.error is None]
    silent = "; ".join(f"{host.address} ({host.error})" for host in bootstrap if host.error)
    if not answered:
        return Finding("kafka", Level.FAIL, f"no bootstrap host answers: {silent}")
    said = f"{', '.join(answered)} {'answers' if len(answered) == 1 else 'answer'}"
    if silent:
        # A broker of the cluster that is down is the `brokers` line's failure; here it is only
        # a bootstrap address clients cannot use.
        return Finding("kafka", Level.WARN, f"{said}; not answering: {silent}")
    return Finding("kafka", Level.OK, said)


def _dead_brokers(metadata: ClusterMetadata) -> dict[int, str]:
    """Each dead broker's id and why it counts as dead."""
    named = {broker for p in metadata.partitions for broker in p.replicas}
    dead = {
        broker: "not registered (stopped, or fenced for missing its heartbeats)"
        for broker in named - metadata.brokers.keys()
    }
    for broker, answer in metadata.brokers.items():
        if answer.error is not None:
            dead[broker] = f"{answer.address} does not answer ({answer.error})"
    return dict(sorted(dead.items()))


def _brokers_finding(metadata: ClusterMetadata, dead: Mapping[int, str]) -> Finding:
    known = {broker for p in metadata.partitions for broker in p.replicas} | metadata.brokers.keys()
    alive = sorted(known - dead.keys())
    counted = f"{len(alive)} of {len(known)} alive ({_ids(alive)})"
    if dead:
        named = "; ".join(f"broker {broker} dead: {why}" for broker, why in dead.items())
        return Finding("brokers", Level.FAIL, f"{named}; {counted}")
    return Finding("brokers", Level.OK, counted)


def _partitions_finding(metadata: ClusterMetadata, dead: set[int]) -> Finding:
    """Each partition in its worst state: no live leader, under min.insync.replicas (writes
    with acks=all refused), under-replicated. A dead broker the controller has not fenced yet
    still leads and sits in the ISR: it counts as gone."""
    leaderless, under_min, under_replicated = [], [], []
    for p in metadata.partitions:
        in_sync = [broker for broker in p.isr if broker not in dead]
        if p.leader == _NO_LEADER or p.leader in dead:
            leaderless.append(p)
        elif len(in_sync) < metadata.min_insync.get(p.topic, 1):
            under_min.append(p)
        elif len(in_sync) < len(p.replicas):
            under_replicated.append(p)
    failures = [
        f"{what}: {compact_partitions(found)}" for what, found in (
            ("without a live leader", leaderless),
            ("under min.insync.replicas (writes refused)", under_min),
            ("under-replicated", under_replicated),
        ) if found
    ]
    if failures:
        return Finding("partitions", Level.FAIL, "; ".join(failures))
    topics = {p.topic for p in metadata.partitions}
    return Finding("partitions", Level.OK, f"{len(metadata.partitions)} partitions of "
                                           f"{len(topics)} topics led and in sync")


def _replication_finding(metadata: ClusterMetadata, dead: set[int]) -> Finding:
    """How the watched topics are configured: replicas and min.insync.replicas."""
    replicas: dict[str, int] = {}
    for p in metadata.partitions:
        replicas[p.topic] = max(replicas.get(p.topic, 0), len(p.replicas))
    brokers = len({b for p in metadata.partitions for b in p.replicas}
                  | metadata.brokers.keys() | dead)
    single = sorted(t for t, n in replicas.items() if n == 1)
    unguarded = sorted(t for t, n in replicas.items()
                       if n > 1 and metadata.min_insync.get(t) == 1)
    warnings = []
    if brokers > 1 and single:
        warnings.append(f"1 replica on a {brokers}-broker cluster (lost with its broker): "
                        f"{', '.join(single)}")
    if unguarded:
        warnings.append("min.insync.replicas 1 with several replicas (a write acknowledged "
                        f"by one broker alone is lost with it): {', '.join(unguarded)}")
    if metadata.configs_error is not None:
        warnings.append(f"min.insync.replicas not read: {metadata.configs_error}")
    if warnings:
        return Finding("replication", Level.WARN, "; ".join(warnings))
    shapes: dict[tuple[int, int | None], list[str]] = defaultdict(list)
    for topic, count in replicas.items():
        shapes[count, metadata.min_insync.get(topic)].append(topic)
    said = "; ".join(
        f"{count} replica(s), min.insync.replicas {minimum}: {len(topics)} topic(s)"
        for (count, minimum), topics in sorted(shapes.items(), key=lambda s: -len(s[1]))
    )
    return Finding("replication", Level.OK, said or "no topics")


def compact_partitions(partitions: Iterable[PartitionState]) -> str:
    """`a[0-2,5], b[1]`: topics in order, each with its partitions, runs of 3 or more as ranges."""
    by_topic: dict[str, list[int]] = defaultdict(list)
    for p in partitions:
        by_topic[p.topic].append(p.partition)
    return ", ".join(f"{topic}[{_ranges(sorted(numbers))}]"
                     for topic, numbers in sorted(by_topic.items()))


def _ranges(numbers: list[int]) -> str:
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ",".join(f"{run[0]}-{run[-1]}" if len(run) > 2 else ",".join(map(str, run))
                    for run in runs)


def _ids(brokers: Iterable[int]) -> str:
    return ", ".join(map(str, brokers)) or "none"


# --- reading -----------------------------------------------------------------------------------


async def read_cluster(target: KafkaAccess, topic_prefix: str, timeout: float) -> ClusterSnapshot:
    """One look at the cluster; every connection and request bounded by `timeout` seconds."""
    hosts = [host.strip() for host in target.bootstrap.split(",") if host.strip()]
    connections = await asyncio.gather(*(_connect(target, host, timeout) for host in hosts))
    try:
        bootstrap = tuple(HostAnswer(host, error) for host, (_, error) in zip(hosts, connections))
        answering = [connection for connection, _ in connections if connection is not None]
        metadata = await _read_metadata(target, answering, topic_prefix, timeout)
        return ClusterSnapshot(bootstrap, metadata)
    finally:
        for connection, _ in connections:
            if connection is not None:
                connection.close()


async def _read_metadata(
    target: KafkaAccess, answering: list[AIOKafkaConnection], topic_prefix: str, timeout: float
) -> ClusterMetadata | str:
    """The metadata from the first bootstrap host that gives it; else why none did."""
    errors = []
    for connection in answering:
        try:
            # None: every topic (the internal ones included), never auto-creating one.
            response = await asyncio.wait_for(connection.send(MetadataRequest(None)), timeout)
        except Exception as exc:
            errors.append(f"{connection.host}:{connection.port} {_reason(exc, timeout)}")
            continue
        described = response.to_object()
        partitions = tuple(
            PartitionState(topic["topic"], p["partition"], p["leader"], tuple(p["replicas"]),
                           tuple(p["isr"]))
            for topic in described["topics"] if _watched(topic["topic"], topic_prefix)
            for p in sorted(topic["partitions"], key=lambda p: int(p["partition"]))
        )
        topics = sorted({p.topic for p in partitions})
        brokers = {b["node_id"]: f"{b['host']}:{b['port']}" for b in described["brokers"]}
        probes, (min_insync, configs_error) = await asyncio.gather(
            asyncio.gather(*(_probe(target, address, timeout) for address in brokers.values())),
            _read_min_insync(connection, topics, timeout),
        )
        return ClusterMetadata(
            brokers={broker: HostAnswer(address, error)
                     for (broker, address), error in zip(brokers.items(), probes)},
            topics=frozenset(t["topic"] for t in described["topics"]),
            partitions=partitions,
            min_insync=min_insync,
            configs_error=configs_error,
        )
    return "; ".join(errors) or "no bootstrap host answers"


def _watched(topic: str, topic_prefix: str) -> bool:
    return topic.startswith(topic_prefix) or topic in _INTERNAL_TOPICS


async def _read_min_insync(
    connection: AIOKafkaConnection, topics: list[str], timeout: float
) -> tuple[dict[str, int], str | None]:
    """Each topic's min.insync.replicas (its own or the broker's default), or why not."""
    if not topics:
        return {}, None
    request = DescribeConfigsRequest([(_TOPIC_RESOURCE, t, [_MIN_INSYNC]) for t in topics])
    try:
        response = await asyncio.wait_for(connection.send(request), timeout)
    except Exception as exc:
        return {}, _reason(exc, timeout)
    found: dict[str, int] = {}
    refused: list[str] = []
    for resource in response.to_object()["resources"]:
        if resource["error_code"]:
            refused.append(f"{resource['resource_name']} (error {resource['error_code']}: "
                           f"{resource['error_message']})")
            continue
        for entry in resource["config_entries"]:
            if entry["config_names"] == _MIN_INSYNC:
                found[resource["resource_name"]] = int(entry["config_value"])
    return found, ("; ".join(refused) or None)


async def _connect(
    target: KafkaAccess, address: str, timeout: float
) -> tuple[AIOKafkaConnection | None, str | None]:
    """A connection to `address` that completed Kafka's handshake, or why there is none."""
    host, _, port = address.rpartition(":")
    try:
        connection = await asyncio.wait_for(
            create_conn(host.strip("[]"), int(port), request_timeout_ms=int(timeout * 1000),
                        **target.security.client_options()),
            timeout,
        )
    except Exception as exc:
        return None, _reason(exc, timeout)
    return connection, None


async def _probe(target: KafkaAccess, address: str, timeout: float) -> str | None:
    """Why the broker at `address` does not answer; None when it does."""
    connection, error = await _connect(target, address, timeout)
    if connection is not None:
        connection.close()
    return error


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {timeout:g}s"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
