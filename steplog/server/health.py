"""`steplog status`: is the stack healthy? Each check says what it saw, and why it failed.

Healthy means: the Kafka cluster answers and has Steplog's topics, every broker they need is
alive and every partition is led and in sync (steplog/server/cluster_health.py); the processors'
consumer group has live members; the group's lag has not been above 0 for longer than
STEPLOG_LAG_GROWTH_S (the oldest event not yet consumed is younger than that); every member's
health endpoint (steplog/server/process_health.py, found through the member's client id,
processors/membership.py) answers that its projection writes and its lag are fine; and ClickHouse answers `SELECT 1`
(the SQL endpoint for the embedded engine, the server otherwise). Every answer is waited for
at most STEPLOG_CHECK_TIMEOUT_S: something that hangs is a failure naming it, never a hang.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlparse

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

import steplog.kafka as kafka
from steplog.credentials import client_key
from steplog.processors.membership import health_port_of
from steplog.projections.clickhouse import chdb_path
from steplog.server.cluster_health import Level, classify, read_cluster
from steplog.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    name: str
    healthy: bool
    detail: str
    warning: bool = False
    """Healthy, but redundancy is missing by configuration: printed as `warn`, exit status 0."""


async def check_stack(settings: Settings) -> list[Check]:
    clickhouse = asyncio.create_task(_check_clickhouse(settings))
    checks = await _check_cluster(settings)
    if checks[0].healthy:  # `kafka`: a host answers and the topics are there
        checks.extend(await _check_processors(settings))
    checks.append(await clickhouse)
    return checks


async def _check_cluster(settings: Settings) -> list[Check]:
    """`kafka` (the bootstrap hosts and the topics), `brokers`, `partitions`, `replication`."""
    names = settings.topics
    snapshot = await read_cluster(kafka.access(settings), settings.topic_prefix,
                                  settings.check_timeout_s)
    findings = classify(snapshot, (names.events, names.signals, names.commands, names.dlq,
                                   names.flows))
    return [Check(f.name, f.level is not Level.FAIL, f.detail, warning=f.level is Level.WARN)
            for f in findings]


class _GroupReadFailed(Exception):
    """Which read of the processors' group failed, and why."""


async def _check_processors(settings: Settings) -> list[Check]:
    """The group's members and lag, then what each member's health endpoint says."""
    group, topic = settings.processors_group, settings.topics.events
    timeout = settings.check_timeout_s
    request_timeout_ms = int(timeout * 1000)
    admin = kafka.admin_client(settings.kafka_bootstrap, request_timeout_ms=request_timeout_ms)
    consumer = kafka.consumer(settings.kafka_bootstrap, group_id=group, enable_auto_commit=False,
                              request_timeout_ms=request_timeout_ms)

    async def read(what: str, answer: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(answer, timeout)
        except TimeoutError:
            raise _GroupReadFailed(f"{what}: no answer within {timeout:g}s (a broker dead or a "
                                   "partition leaderless? see the brokers and partitions "
                                   "lines)") from None
        except Exception as exc:
            raise _GroupReadFailed(f"{what}: {type(exc).__name__}: {exc}") from exc

    try:
        await read("connecting to Kafka", admin.start())
        # The group's coordinator is the leader of the group's __consumer_offsets partition:
        # while it is dead or leaderless, this is the read that fails.
        members = await read("describing the group through its coordinator",
                             group_members(admin, group, topic))
        await read("starting a consumer", consumer.start())
        backlog = await read(f"reading the group's offsets on {topic}",
                             events_backlog(admin, consumer, topic, settings.lag_growth_s))
    except _GroupReadFailed as exc:
        return [Check("processors", False, f"cannot describe group {group!r}: {exc}")]
    finally:
        await consumer.stop()
        await admin.close()
    checks = [
        Check("processors", True, f"{members.describe()} in {group!r}")
        if members.partitions else
        Check("processors", False, f"consumer group {group!r} has no members ({members.state})"),
        backlog.check(settings.lag_growth_s),
    ]
    endpoints = [endpoint for endpoint in members.health_endpoints if endpoint]
    checks.extend(await asyncio.gather(
        *(_check_endpoint(endpoint, settings.check_timeout_s) for endpoint in endpoints)
    ))
    return checks


async def _check_endpoint(endpoint: str, timeout: float) -> Check:
    url = f"http://{endpoint}/health"
    name = f"health {endpoint}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.get(url) as response:
                body = await response.json()
    except TimeoutError:
        return Check(name, False, f"{url} did not answer within {timeout:g}s (the processors "
                                  "process is stopped or its event loop is blocked)")
    except Exception as exc:
        return Check(name, False, f"{url} does not answer: {exc!r}")
    checks = body.get("checks", []) if isinstance(body, dict) else []
    said = "; ".join(f"{c.get('name')}: {c.get('detail')}" for c in checks
                     if body.get("healthy") or not c.get("healthy"))
    return Check(name, bool(body.get("healthy")), said or f"{url} answered {body!r}")


@dataclass(frozen=True)
class Backlog:
    """The group's lag on the events topic, and how long it has been above 0."""

    lag: int
    stale_partitions: tuple[int, ...]
    """Partitions whose oldest event not yet consumed was appended before the window."""

    def check(self, bound: float) -> Check:
        if self.stale_partitions:
            return Check(
                "lag", False,
                f"lag {self.lag} events, and it has not been 0 for over {bound:g}s: "
                f"partitions {list(self.stale_partitions)} still hold events appended before "
                "then (the processors are stopped or do not keep up)",
            )
        return Check("lag", True, f"lag {self.lag} events (none waiting longer than {bound:g}s)")


async def events_backlog(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, topic: str, window: float
) -> Backlog:
    """The lag, and the partitions where it has been above 0 throughout the last `window`
    seconds: those whose committed offset is below the first offset appended within the window
    (the events before it are still pending, so the lag never reached 0 meanwhile). One look
    at the log, no history: it holds when the processors cannot answer for themselves."""
    positions = await group_positions(admin, consumer, topic)
    if not positions:
        return Backlog(0, ())
    since = int((time.time() - window) * 1000)
    firsts = await consumer.offsets_for_times({tp: since for tp in positions})
    stale = []
    for tp, (committed, end) in positions.items():
        first = firsts.get(tp)
        if committed < (first.offset if first is not None else end):
            stale.append(tp.partition)
    return Backlog(sum(end - committed for committed, end in positions.values()), tuple(stale))


async def group_positions(
    admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, topic: str
) -> dict[TopicPartition, tuple[int, int]]:
    """Each partition's committed offset of the group (`consumer`'s) and its end offset."""
    assigned = await _partitions(admin, topic)
    ends = await consumer.end_offsets(assigned) if assigned else {}
    return {tp: (await consumer.committed(tp) or 0, ends[tp]) for tp in assigned}


async def _partitions(admin: AIOKafkaAdminClient, topic: str) -> list[TopicPartition]:
    """The topic's partitions, from its metadata: a consumer that subscribes to nothing (these
    only read the group's offsets) knows no topic's partitions."""
    described = await admin.describe_topics([topic])
    return [
        TopicPartition(topic, p) for p in sorted(
            int(p.get("partition", p.get("partition_index")))
            for t in described if t.get("topic", t.get("name")) == topic
            for p in t["partitions"]
        )
    ]


@dataclass(frozen=True)
class GroupMembers:
    state: str
    """The group's state as the broker names it (`Stable`, `PreparingRebalance`, ...)."""
    partitions: tuple[frozenset[int], ...]
    """The partitions of the topic asked about that each member holds."""
    health_endpoints: tuple[str | None, ...] = ()
    """Each member's health endpoint (host:port), from its client id and host; None when the
    member serves none."""

    def describe(self) -> str:
        held = " | ".join(",".join(map(str, sorted(p))) or "-" for p in self.partitions)
        return f"{len(self.partitions)} member(s) holding events partitions {held} ({self.state})"


async def group_members(admin: AIOKafkaAdminClient, group: str, topic: str) -> GroupMembers:
    """The members of `group` and the partitions of `topic` each holds, from aiokafka's raw
    DescribeGroupsResponses (groups read {"error_code", "group", "state", "protocol_type",
    "protocol", "members"}, each member's assignment in the consumer protocol's encoding)."""
    for response in await admin.describe_consumer_groups([group]):
        for found in response.to_object()["groups"]:
            if found["error_code"]:
                return GroupMembers(f"error code {found['error_code']}", ())
            held, endpoints = [], []
            for member in found["members"]:
                raw = member["member_assignment"]
                assignment = ConsumerProtocolMemberAssignment.decode(raw) if raw else None
                held.append(frozenset(
                    tp.partition for tp in (assignment.partitions() if assignment else [])
                    if tp.topic == topic
                ))
                endpoints.append(_health_endpoint(member["client_id"], member["client_host"]))
            return GroupMembers(str(found["state"]), tuple(held), tuple(endpoints))
    return GroupMembers("unknown", ())


def _health_endpoint(client_id: str, client_host: str) -> str | None:
    port = health_port_of(client_id)
    if port is None:
        return None
    host = client_host.lstrip("/")  # the broker writes "/127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def read_group_members(bootstrap: str, group: str, topic: str) -> GroupMembers:
    """`group_members` with an admin client of its own (tests and benchmarks waiting for a
    group to settle)."""
    admin = kafka.admin_client(bootstrap)
    await admin.start()
    try:
        return await group_members(admin, group, topic)
    finally:
        await admin.close()


async def _check_clickhouse(settings: Settings) -> Check:
    """`SELECT 1` through the SQL endpoint (or the server), within the timeout: a ping would
    be answered by an endpoint whose engine is stuck behind a query."""
    timeout = settings.check_timeout_s
    auth = None
    if chdb_path(settings.clickhouse_dsn) is not None:
        base, name = f"http://127.0.0.1:{settings.sql_port}", "sql endpoint"
        key = client_key(settings)
        if key is not None:
            auth = aiohttp.BasicAuth("default", key)
    else:
        dsn = urlparse(settings.clickhouse_dsn)
        base, name = f"{dsn.scheme}://{dsn.hostname}:{dsn.port or 8123}", "clickhouse"
        if dsn.username:
            auth = aiohttp.BasicAuth(dsn.username, dsn.password or "")
    url = f"{base}/?query=SELECT%201"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            async with http.get(url, auth=auth) as response:
                body = await response.text()
    except TimeoutError:
        return Check(name, False, f"{base} did not answer SELECT 1 within {timeout:g}s (hung?)")
    except Exception as exc:
        return Check(name, False, f"{base} does not answer: {exc!r}")
    if response.status == 200 and body.strip() == "1":
        return Check(name, True, f"{base} answers SELECT 1")
    return Check(name, False, f"{base} answered SELECT 1 with {response.status}: {body[:200]}")
