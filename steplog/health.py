"""`steplog status`: is the stack healthy? Each check says what it saw.

Healthy means: the broker answers and has Steplog's topics, the processors' consumer group has
live members (with their lag), and ClickHouse answers (the SQL endpoint for the embedded
engine, the server otherwise).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from steplog.projections.clickhouse import chdb_path
from steplog.settings import Settings

TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    healthy: bool
    detail: str


async def check_stack(settings: Settings, processors_group: str) -> list[Check]:
    broker = await _check_broker(settings)
    checks = [broker]
    if broker.healthy:
        checks.append(await _check_processors(settings, processors_group))
    checks.append(await _check_clickhouse(settings))
    return checks


async def _check_broker(settings: Settings) -> Check:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=int(TIMEOUT_S * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), TIMEOUT_S)
        topics = set(await admin.list_topics())
    except Exception as exc:
        return Check("kafka", False, f"{settings.kafka_bootstrap} does not answer: {exc!r}")
    finally:
        await admin.close()
    names = settings.topics
    missing = [t for t in (names.events, names.signals, names.commands, names.dlq, names.flows)
               if t not in topics]
    if missing:
        return Check("kafka", False, f"missing topics {missing} (run `steplog topics ensure`)")
    return Check("kafka", True, f"{settings.kafka_bootstrap}, topics present")


async def _check_processors(settings: Settings, group: str) -> Check:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group,
                                enable_auto_commit=False)
    try:
        await admin.start()
        members = await group_members(admin, group, settings.topics.events)
        await consumer.start()
        lag = await _events_lag(admin, consumer, settings.topics.events)
        if not members.partitions:
            return Check(
                "processors", False,
                f"consumer group {group!r} has no members ({members.state}), lag {lag} events",
            )
        return Check("processors", True, f"{members.describe()} in {group!r}, lag {lag} events")
    except Exception as exc:
        return Check("processors", False, f"cannot describe group {group!r}: {exc!r}")
    finally:
        await consumer.stop()
        await admin.close()


async def _events_lag(admin: AIOKafkaAdminClient, consumer: AIOKafkaConsumer, topic: str) -> int:
    """Events of the topic past the group's committed offsets.

    The partitions come from the topic's metadata: a consumer that subscribes to nothing (this
    one only reads the group's offsets) knows no topic's partitions.
    """
    described = await admin.describe_topics([topic])
    partitions = sorted(
        int(p.get("partition", p.get("partition_index")))
        for t in described if t.get("topic", t.get("name")) == topic
        for p in t["partitions"]
    )
    assigned = [TopicPartition(topic, p) for p in partitions]
    ends = await consumer.end_offsets(assigned) if assigned else {}
    lag = 0
    for tp in assigned:
        committed = await consumer.committed(tp)
        lag += ends[tp] - (committed or 0)
    return lag


@dataclass(frozen=True)
class GroupMembers:
    state: str
    """The group's state as the broker names it (`Stable`, `PreparingRebalance`, ...)."""
    partitions: tuple[frozenset[int], ...]
    """The partitions of the topic asked about that each member holds."""

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
            held = []
            for member in found["members"]:
                raw = member["member_assignment"]
                assignment = ConsumerProtocolMemberAssignment.decode(raw) if raw else None
                held.append(frozenset(
                    tp.partition for tp in (assignment.partitions() if assignment else [])
                    if tp.topic == topic
                ))
            return GroupMembers(str(found["state"]), tuple(held))
    return GroupMembers("unknown", ())


async def read_group_members(bootstrap: str, group: str, topic: str) -> GroupMembers:
    """`group_members` with an admin client of its own (tests and benchmarks waiting for a
    group to settle)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await group_members(admin, group, topic)
    finally:
        await admin.close()


async def _check_clickhouse(settings: Settings) -> Check:
    if chdb_path(settings.clickhouse_dsn) is not None:
        url = f"http://127.0.0.1:{settings.sql_port}/ping"
        name = "sql endpoint"
    else:
        url = settings.clickhouse_dsn.rstrip("/") + "/ping"
        name = "clickhouse"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as http:
            async with http.get(url) as response:
                body = await response.text()
                if response.status == 200 and body.startswith("Ok"):
                    return Check(name, True, url)
                return Check(name, False, f"{url} answered {response.status}: {body[:100]}")
    except Exception as exc:
        return Check(name, False, f"{url} does not answer: {exc!r}")
