"""The stateful consumer and its state stores against the real broker: states come back from
their changelog partition by partition (also the states faust's tables wrote), offsets are
committed once a batch and its states are done, later batches are processed while one is
written (writes and commits in batch order, a commit after its write), batches without rows
keep states in several stores and write nothing, and a partition that moves to another
consumer of the group takes its states along; completions are paced: the batches handled
within the write interval go out together."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from steplog.processors.fold.signals import NameTriggers, NameWaits
from steplog.processors.fold.state import RunState
from steplog.processors.state_store import StateStore
from steplog.processors.stateful_consumer import Record, StatefulConsumer
from steplog.projections.log_reader import topic_end_offsets
from steplog.projections.writer import TableRows
from steplog.settings import Settings
from steplog.server.stack import changelog_specs, processor_config
from steplog.topics import ensure_topics

RUNS = [f"run-{n}".encode() for n in range(12)]


def new_store(settings: Settings, memory_bytes: int | None = None) -> StateStore[RunState]:
    config = processor_config(settings)
    if memory_bytes is not None:
        config = replace(config, state_memory_bytes=memory_bytes)
    return config.state_store(config.runs_changelog, RunState.from_bytes)


def new_name_stores(
    settings: Settings,
) -> tuple[StateStore[NameWaits], StateStore[NameTriggers]]:
    config = processor_config(settings)
    return (config.state_store(config.waits_changelog, NameWaits.from_bytes),
            config.state_store(config.triggers_changelog, NameTriggers.from_bytes))


def new_state(run_id: str, *seen: str) -> RunState:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return RunState(project="p", flow="f", run_id=run_id, updated_at=at, created_at=at,
                    seen=set(seen))


async def create_changelog(settings: Settings) -> None:
    await ensure_topics(settings.kafka_bootstrap,
                        changelog_specs(processor_config(settings), settings))


async def until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def test_sent_states_are_recovered_per_partition_newest_first(topics: Settings) -> None:
    async def scenario() -> None:
        await create_changelog(topics)
        writer = new_store(topics)
        await writer.start()
        try:
            await writer.recover([0, 1, 2])
            writer.put(0, b"a", new_state("a", "e1"))
            writer.put(1, b"b", new_state("b", "e1"))
            await writer.send(writer.take_unsent())
            writer.put(1, b"b", new_state("b", "e1", "e2"))
            await writer.send(writer.take_unsent())
        finally:
            await writer.stop()

        reader = new_store(topics)  # reading back needs no producer
        await reader.recover([1])
        assert reader.partitions == {1}
        recovered = reader.get(1, b"b")
        assert recovered is not None and recovered.seen == {"e1", "e2"}
        assert reader.find(b"a") is None  # partition 0 was not asked for
        assert [key for key, _ in reader.items()] == [b"b"]
        reader.release([1])
        assert reader.partitions == frozenset() and len(reader) == 0

    asyncio.run(scenario())


def test_states_beyond_the_memory_budget_go_to_disk_and_are_all_recovered(
    topics: Settings,
) -> None:
    # About 25 states fit in 16 KiB: 600 runs, each written twice, spill both the writer
    # (between batches) and the reader (while recovering).
    budget = 16 * 1024

    async def scenario() -> None:
        await create_changelog(topics)
        writer = new_store(topics, budget)
        await writer.start()
        try:
            await writer.recover([0, 1, 2])
            for version in ("e1", "e2"):
                for number in range(600):
                    run_id = f"run-{number}"
                    held = writer.get(number % 3, run_id.encode())
                    seen = (held.seen if held else set()) | {version}
                    writer.put(number % 3, run_id.encode(), new_state(run_id, *seen))
                    if number % 50 == 49:  # a batch
                        await writer.send(writer.take_unsent())
            assert writer.bytes_in_memory <= budget
            assert len(writer) == 600
            spilled = writer.get(0, b"run-0")
            assert spilled is not None and spilled.seen == {"e1", "e2"}
        finally:
            await writer.stop()

        reader = new_store(topics, budget)
        await reader.recover([0, 1, 2])
        assert reader.bytes_in_memory <= budget
        assert len(reader) == 600
        states = dict(reader.items())
        assert sorted(states) == sorted(f"run-{n}".encode() for n in range(600))
        assert all(state.seen == {"e1", "e2"} for state in states.values())
        found = reader.find(b"run-1")
        assert found is not None and found.seen == {"e1", "e2"}

    asyncio.run(scenario())


def test_a_name_store_reads_back_the_states_fausts_table_wrote(topics: Settings) -> None:
    async def scenario() -> None:
        await create_changelog(topics)
        # As faust's `waits` table wrote them: the name as key, NameWaits.to_bytes() as value,
        # to the partition of the signal that changed it.
        waits = NameWaits()
        waits.remember("signal-1")
        producer = AIOKafkaProducer(bootstrap_servers=topics.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            changelog = processor_config(topics).waits_changelog
            await producer.send_and_wait(changelog, waits.to_bytes(), key=b"approved",
                                         partition=1)
        finally:
            await producer.stop()

        store, _ = new_name_stores(topics)
        await store.recover([0, 1])
        recovered = store.get(1, b"approved")
        assert recovered is not None and list(recovered.recent) == ["signal-1"]
        assert store.get(0, b"approved") is None

    asyncio.run(scenario())


@dataclass
class CountedBatch:
    """A CountingMember's folded batch: its states, kept before its rows are handed back, and
    one "row": its number."""

    member: CountingMember
    number: int
    states: dict[tuple[int, bytes], RunState] = field(default_factory=dict)

    @property
    def rows(self) -> Mapping[str, TableRows]:
        return {"events": TableRows(("batch",), [(self.number,)])}

    def keep(self) -> None:
        self.member.journal.append(f"keep {self.number}")
        for (partition, key), state in self.states.items():
            self.member.store.put(partition, key, state)


class CountingMember:
    """A consumer of the group whose batch puts, for each record, its position into its run's
    state: a run's state ends up with every position only if it followed its partition."""

    def __init__(
        self, settings: Settings, write_interval: float = 0.0, rebalance_timeout: float = 60.0
    ) -> None:
        self.store = new_store(settings)
        self.recoveries = 0
        self.batches = 0
        self.journal: list[str] = []
        self.writes: list[list[int]] = []
        """The batches of each write begun."""
        self.write_times: list[float] = []
        self.gate = asyncio.Event()
        self.gate.set()  # writes go through unless a test closes it
        self.consumer = StatefulConsumer(
            bootstrap=settings.kafka_bootstrap, group_id=processor_config(settings).app_id,
            topic=settings.topics.events, stores=[self.store], process=self.process,
            write=self.write, recovered=self.recovered, max_records=1000,
            max_fetch_bytes=1024 * 1024, write_interval=write_interval, poll_ms=100,
            rebalance_timeout=rebalance_timeout,
        )
        self.task = asyncio.create_task(self.consumer.run())

    async def process(self, records: Sequence[Record]) -> Mapping[str, TableRows]:
        self.batches += 1
        folded = CountedBatch(self, self.batches)
        for record in records:
            assert record.key is not None
            run = (record.partition, record.key)
            state = folded.states.get(run) or self.store.get(*run)
            state = state or new_state(record.key.decode())
            state.seen.add(f"{record.partition}:{record.offset}")
            folded.states[run] = state
        folded.keep()
        return folded.rows

    async def write(self, rows: Mapping[str, TableRows]) -> None:
        """Notes the batches written together, waiting for the gate in between."""
        batches = [row[0] for row in rows["events"].rows]
        self.journal.append(f"write {batches}")
        self.writes.append(batches)
        self.write_times.append(time.monotonic())
        await self.gate.wait()
        self.journal.append(f"written {batches}")

    async def recovered(self) -> None:
        self.recoveries += 1

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def send_round(
    settings: Settings, value: bytes, topic: str | None = None
) -> dict[bytes, set[str]]:
    """One message per run (to the events topic unless told); the positions each run's
    message landed at."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        sent = {key: await (await producer.send(topic or settings.topics.events, value, key=key))
                for key in RUNS}
    finally:
        await producer.stop()
    return {key: {f"{meta.partition}:{meta.offset}"} for key, meta in sent.items()}


async def committed(settings: Settings, group: str | None = None,
                    topic: str | None = None) -> list[int]:
    """The group's committed offsets on the topic (the fold's group, events, unless told)."""
    topic = topic or settings.topics.events
    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap,
                              group_id=group or processor_config(settings).app_id,
                              enable_auto_commit=False)
    await reader.start()
    try:
        partitions = len(await topic_end_offsets(settings.kafka_bootstrap, topic))
        return [await reader.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)]
    finally:
        await reader.stop()


async def until_committed_to_the_end(
    settings: Settings, group: str | None = None, topic: str | None = None,
    consumer: asyncio.Task[None] | None = None,
) -> None:
    """Wait (30 s at most) until the group has committed the whole topic (`committed`'s
    defaults); `consumer`, if given, must not stop meanwhile."""
    ends = await topic_end_offsets(settings.kafka_bootstrap, topic or settings.topics.events)
    deadline = time.monotonic() + 30
    while (offsets := await committed(settings, group, topic)) != ends:
        assert consumer is None or not consumer.done(), consumer
        assert time.monotonic() < deadline, f"committed {offsets}, ends {ends}"
        await asyncio.sleep(0.1)


def test_a_partition_moves_to_another_member_with_its_run_states(topics: Settings) -> None:
    async def scenario() -> None:
        await create_changelog(topics)
        first = CountingMember(topics)
        second: CountingMember | None = None
        try:
            positions = await send_round(topics, b"one")
            await until(lambda: all(
                (state := first.store.find(key)) is not None and state.seen == positions[key]
                for key in RUNS), "the first round folded by the only member")

            second = CountingMember(topics)
            members = (first, second)
            everything = frozenset(range(topics.events_partitions))
            await until(lambda: second.store.partitions != frozenset()
                        and first.store.partitions | second.store.partitions == everything
                        and not first.store.partitions & second.store.partitions,
                        "the partitions shared between the two members")

            for key, more in (await send_round(topics, b"two")).items():
                positions[key] |= more

            def owner_state(key: bytes) -> RunState | None:
                found = [m.store.find(key) for m in members]
                return next((state for state in found if state is not None), None)

            await until(lambda: all(
                (state := owner_state(key)) is not None and state.seen == positions[key]
                for key in RUNS), "every run's state to have both rounds, wherever it lives")
            moved = [key for key in RUNS if second.store.find(key) is not None]
            assert moved, "the second member took no run over"
            assert second.recoveries >= 1
            # Committed once the batch and its states are done: to the end, by one or the other.
            await until_committed_to_the_end(topics)
        finally:
            await first.stop()
            if second is not None:
                await second.stop()

    asyncio.run(scenario())


def test_a_revoke_gives_up_a_stuck_write_and_the_next_owner_folds_its_batch_again(
    topics: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Were the stuck write waited for past the rebalance timeout, the group would drop the
    # first member and its write, once through, would send older states after the new owner's.
    async def scenario() -> None:
        await create_changelog(topics)
        first = CountingMember(topics, rebalance_timeout=10.0)
        second: CountingMember | None = None
        everything = frozenset(range(topics.events_partitions))
        try:
            positions = await send_round(topics, b"one")
            await until_committed_to_the_end(topics)
            first.gate.clear()  # ClickHouse stops answering
            written = len(first.writes)
            for key, more in (await send_round(topics, b"two")).items():
                positions[key] |= more
            await until(lambda: len(first.writes) > written, "round two's write, stuck")
            stuck = first.writes[-1]

            second = joined = CountingMember(topics, rebalance_timeout=10.0)
            await until(lambda: joined.store.partitions != frozenset()
                        and first.store.partitions | joined.store.partitions == everything
                        and not first.store.partitions & joined.store.partitions,
                        "the partitions shared, the stuck write given up")
            assert "given up" in caplog.text
            first.gate.set()  # ClickHouse is back
            await until_committed_to_the_end(topics)
            assert f"written {stuck}" not in first.journal

            # What the changelog holds now is every run with both rounds: the first member
            # recovers every partition from it once the second leaves.
            await second.stop()
            second = None
            await until(lambda: first.store.partitions == everything and all(
                (state := first.store.find(key)) is not None and state.seen == positions[key]
                for key in RUNS), "every run's state, read back, with both rounds")
        finally:
            await first.stop()
            if second is not None:
                await second.stop()

    with caplog.at_level(logging.WARNING, logger="steplog.processors"):
        asyncio.run(scenario())


def test_later_batches_are_folded_while_one_is_written_and_committed_only_after_it(
    topics: Settings,
) -> None:
    async def scenario() -> None:
        await create_changelog(topics)
        member = CountingMember(topics)
        member.gate.clear()  # every write waits until the gate opens
        try:
            await send_round(topics, b"one")
            await until(lambda: bool(member.writes), "the first write")
            first = member.writes[0]  # batch 1, and any folded before the write began
            await send_round(topics, b"two")
            await until(lambda: member.batches > first[-1], "a batch folded meanwhile")
            # Its states are kept (the fold goes on from them), its write waits for the first
            # one, and nothing is committed before the first write is done.
            assert f"keep {first[-1] + 1}" in member.journal
            assert member.writes == [first]
            assert await committed(topics) == [0] * topics.events_partitions

            member.gate.set()
            await until_committed_to_the_end(topics)
            # Every batch written once, in order, each write after the previous one ended.
            assert sum(member.writes, []) == list(range(1, member.batches + 1))
            for before, after in zip(member.writes, member.writes[1:]):
                assert (member.journal.index(f"write {after}")
                        > member.journal.index(f"written {before}"))
        finally:
            await member.stop()

    asyncio.run(scenario())


def test_batches_folded_within_the_write_interval_are_written_together(
    topics: Settings,
) -> None:
    async def scenario() -> None:
        await create_changelog(topics)
        member = CountingMember(topics, write_interval=2.0)
        try:
            await send_round(topics, b"one")
            await until(lambda: bool(member.writes), "the first write (at once)")
            folded_first = member.batches
            await send_round(topics, b"two")
            await until(lambda: member.batches > folded_first, "round two folded")
            await send_round(topics, b"three")
            await until(lambda: len(member.writes) == 2, "the second write")
            # Whatever was folded after the first write, in one write, the interval after it.
            assert member.writes[1] == list(range(member.writes[0][-1] + 1, member.batches + 1))
            assert member.write_times[1] - member.write_times[0] >= 2.0
            await until_committed_to_the_end(topics)
        finally:
            await member.stop()

    asyncio.run(scenario())


@dataclass
class AppliedNames:
    """A batch with no rows and states in two stores: each record's position remembered by its
    key's waits, and its key added to its key's triggers."""

    stores: tuple[StateStore[NameWaits], StateStore[NameTriggers]]
    waits: dict[tuple[int, bytes], NameWaits] = field(default_factory=dict)
    triggers: dict[tuple[int, bytes], NameTriggers] = field(default_factory=dict)

    @property
    def rows(self) -> Mapping[str, TableRows]:
        return {}

    def keep(self) -> None:
        for (partition, key), waits in self.waits.items():
            self.stores[0].put(partition, key, waits)
        for (partition, key), triggers in self.triggers.items():
            self.stores[1].put(partition, key, triggers)


def test_batches_without_rows_store_states_in_every_store_then_commit_writing_nothing(
    topics: Settings,
) -> None:
    async def scenario() -> None:
        await create_changelog(topics)
        stores = new_name_stores(topics)
        waits = stores[0]

        async def process(records: Sequence[Record]) -> Mapping[str, TableRows]:
            applied = AppliedNames(stores)
            for record in records:
                assert record.key is not None
                name = (record.partition, record.key)
                held = applied.waits.get(name) or waits.get(*name) or NameWaits()
                held.remember(f"{record.partition}:{record.offset}")
                applied.waits[name] = held
                applied.triggers[name] = NameTriggers({("p", "app", record.key.decode())})
            applied.keep()
            return applied.rows

        group = processor_config(topics).signals_group
        consumer = StatefulConsumer(
            bootstrap=topics.kafka_bootstrap, group_id=group, topic=topics.topics.signals,
            stores=stores, process=process, max_records=1000, max_fetch_bytes=1024 * 1024,
            poll_ms=100,
        )  # no writer: a batch with rows would stop it
        task = asyncio.create_task(consumer.run())
        try:
            positions = await send_round(topics, b"one", topics.topics.signals)
            for key, more in (await send_round(topics, b"two", topics.topics.signals)).items():
                positions[key] |= more
            await until_committed_to_the_end(topics, group, topics.topics.signals, task)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        # Committed, so both stores' states are in their changelogs, with every record.
        read_waits, read_triggers = new_name_stores(topics)
        partitions = list(range(topics.signals_partitions))
        await read_waits.recover(partitions)
        await read_triggers.recover(partitions)
        for key in RUNS:
            found = read_waits.find(key)
            assert found is not None and set(found.recent) == positions[key]
            assert read_triggers.find(key) == NameTriggers({("p", "app", key.decode())})

    asyncio.run(scenario())


class _OtherProtocol(RoundRobinPartitionAssignor):  # type: ignore[misc]  # aiokafka is untyped
    """How faust's members looked to the group: an assignor of another name."""

    name = "other-protocol"


def test_a_group_held_by_another_protocol_is_joined_once_its_members_left(
    topics: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        await create_changelog(topics)
        old = AIOKafkaConsumer(
            topics.topics.events, bootstrap_servers=topics.kafka_bootstrap,
            group_id=processor_config(topics).app_id,
            partition_assignment_strategy=(_OtherProtocol,),
        )
        await old.start()
        member: CountingMember | None = None
        try:
            while not old.assignment():
                await old.getmany(timeout_ms=100)
            member = CountingMember(topics)
            await until(lambda: "members of another protocol" in caplog.text,
                        "the member to find the group held")
            positions = await send_round(topics, b"one")
            await old.stop()  # leaves the group: the member joins at its next attempt
            await until(lambda: all(
                (state := member.store.find(key)) is not None and state.seen == positions[key]
                for key in RUNS), "the round folded once the old member left")
            assert not member.task.done()
        finally:
            await old.stop()
            if member is not None:
                await member.stop()

    with caplog.at_level(logging.WARNING, logger="steplog.processors"):
        asyncio.run(scenario())
