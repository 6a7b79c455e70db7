"""The SDK's sender on a 3-node cluster when the broker leading the most partitions is
SIGKILLed under load: the partitions led by the other nodes go on being acknowledged without a
pause, every event lands (read back from the topic), and the moved partitions resume soon after
Kafka has named their new leaders (the figures are printed; BENCHMARKS-style)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import steplog.kafka as kafka
from steplog.producers.partition_lanes import Lane, PartitionLanes
from steplog.producers.sender import EventSender
from steplog.server.broker.cluster import LocalCluster
from steplog.topics import ensure_topics, topic_specs
from tests.cluster_fixtures import cluster_settings, restarted_after
from tests.conftest import wait_for

_RATE = 500  # events/s
_KEYS = 120
_KILL_AFTER_S = 4.0
_AFTER_RESUME_S = 3.0


class _Acks:
    """When each partition's events were acknowledged (the lanes' bookkeeping, observed)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.times: dict[int, list[float]] = {}
        self._lock = threading.Lock()
        delivered = PartitionLanes.delivered

        def observed(lanes: PartitionLanes, lane: Lane, count: int) -> int:
            with self._lock:
                self.times.setdefault(lane.partition, []).append(time.monotonic())
            return delivered(lanes, lane, count)

        monkeypatch.setattr(PartitionLanes, "delivered", observed)

    def longest_gap(self, partition: int, start: float, end: float) -> float:
        with self._lock:
            times = [start] + [t for t in self.times.get(partition, []) if start < t < end] + [end]
        return max(b - a for a, b in zip(times, times[1:]))

    def first_after(self, partition: int, moment: float) -> float | None:
        with self._lock:
            return next((t for t in self.times.get(partition, []) if t > moment), None)


def _send_at_rate(sender: EventSender, stop: threading.Event, sent: list[int]) -> None:
    began = time.monotonic()
    n = 0
    while not stop.is_set():
        due = int((time.monotonic() - began) * _RATE)
        while n < due:
            sender.send(b"run-%d" % (n % _KEYS), b"%d" % n)
            n += 1
        stop.wait(0.01)
    sent.append(n)


async def _read_back(bootstrap: str, topic: str, expected: int) -> list[int]:
    consumer = kafka.consumer(bootstrap, topic, auto_offset_reset="earliest",
                              enable_auto_commit=False)
    await consumer.start()
    values: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(set(values)) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            values.extend(int(r.value) for records in batches.values() for r in records
                          if r.value is not None)
    finally:
        await consumer.stop()
    return values


@pytest.fixture
def acks(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Acks]:
    yield _Acks(monkeypatch)


@pytest.mark.timeout(240)
def test_killing_the_leading_broker_pauses_only_its_partitions_and_loses_nothing(
    kafka_cluster: LocalCluster, acks: _Acks, clickhouse_dsn: str, tmp_path: Path  # noqa: F811
) -> None:
    settings = cluster_settings(kafka_cluster, clickhouse_dsn, tmp_path / "steplog")
    topic = settings.topics.events
    asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
    sender = EventSender(settings.kafka_bootstrap, topic)
    stop, sent = threading.Event(), list[int]()
    sending = threading.Thread(target=_send_at_rate, args=(sender, stop, sent))
    with restarted_after(kafka_cluster):
        leaders = kafka_cluster.partition_leaders(topic)
        victim = kafka_cluster.leading_node(topic)
        moved = sorted(p for p, node in leaders.items() if node == victim)
        stayed = sorted(p for p in leaders if p not in moved)
        sending.start()
        try:
            wait_for(lambda: sender.stats().sent > _RATE * _KILL_AFTER_S / 2, timeout=30,
                     what="delivery under way")
            killed_at = time.monotonic()
            kafka_cluster.kill(victim)
            elected: dict[int, float] = {}

            def all_elected() -> bool:
                now = time.monotonic()
                try:
                    leaders_now = kafka_cluster.partition_leaders(topic)
                except Exception:  # asked the dead node: ask again
                    return False
                for p, node in leaders_now.items():
                    if p in moved and node not in (-1, victim):
                        elected.setdefault(p, now)
                return len(elected) == len(moved)

            wait_for(all_elected, timeout=30, what="new leaders for the moved partitions")
            wait_for(lambda: all(acks.first_after(p, elected[p]) for p in moved), timeout=30,
                     what="delivery on the moved partitions")
            resumed_at = max(t for p in moved if (t := acks.first_after(p, elected[p])))
            wait_for(lambda: time.monotonic() > resumed_at + _AFTER_RESUME_S, timeout=10,
                     what="delivery after the failover")
        finally:
            stop.set()
            sending.join()
        assert sender.flush(timeout=30)
        sender.close()
        end = time.monotonic()
        values = asyncio.run(_read_back(settings.kafka_bootstrap, topic, sent[0]))

    gaps = {p: acks.longest_gap(p, killed_at, end) for p in stayed}
    # acks=all waits on the dead broker as an in-sync follower of every partition it
    # replicates (all of them, 3 replicas on 3 nodes) until the controller fences it, which is
    # also when it names the moved partitions' new leaders: the others resume then.
    others_resumed = {p: (acks.first_after(p, max(elected.values()) - 1.0) or end)
                      - max(elected.values()) for p in stayed}
    resumed = {p: (acks.first_after(p, elected[p]) or end) - elected[p] for p in moved}
    election = max(elected.values()) - killed_at
    print(f"\nkilled node {victim} (led {moved}); new leaders {election:.1f}s after the kill; "
          f"longest pause on the others {max(gaps.values()):.2f}s, resumed "
          f"{max(others_resumed.values()):.2f}s after; moved partitions resumed "
          f"{max(resumed.values()):.2f}s after their new leader was seen; "
          f"{sent[0]} sent, {len(values)} on the topic ({len(set(values))} distinct)")
    stats = sender.stats()
    assert (stats.dropped, stats.failed) == (0, 0)
    assert set(values) == set(range(sent[0])), "events lost"
    assert max(gaps.values()) < election + 2.0, gaps
    assert max(others_resumed.values()) < 2.0, others_resumed
    assert max(resumed.values()) < 2.0, resumed
