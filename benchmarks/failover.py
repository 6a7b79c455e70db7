"""A broker lost under load (issue 23): how long Steplog stalls, against Kafka's own failover.

Starts a 3-node local cluster (broker/cluster.py) and the processors on it, sends --rate step
events a second through `steplog.Client`, and meanwhile writes to a probe topic of its own with
a bare aiokafka producer (acks=all, idempotent, one record per partition every 20 ms). Then,
twice: SIGKILLs the node leading the most events partitions, and (once it is back and in sync)
shuts the leading node down the controlled way. Prints, for each:

- events lost: sent by the SDK, not in ClickHouse (goal 0);
- Kafka: from the kill until every probe partition acknowledges writes again (the bare
  producer's failover: fencing, leader election, its metadata refresh);
- SDK: from the kill until every events partition's high watermark moves again (the SDK's
  writes are acknowledged), and its ratio to Kafka's (goal <= 1.2);
- rows: from the kill until ClickHouse's rows move again, and its ratio to Kafka's;
- for the controlled shutdown, the longest stall of each (goal: none over 1 s).

    .venv/bin/python benchmarks/failover.py                # 1,000 events/s
    .venv/bin/python benchmarks/failover.py --rate 300 --after-s 40

A stall is measured as the longest gap between two advances (acks, watermark moves, row-count
increases) that ends after the kill; watermarks and rows are polled every 50 and 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the stack's fixtures: tests/

from steplog.producers.client import Client  # noqa: E402
from steplog.server.broker import LocalCluster  # noqa: E402
from steplog.settings import Settings, load_settings  # noqa: E402
from steplog.topics import ensure_topics, topic_specs  # noqa: E402
from tests.conftest import RunningProcessors, free_port, start_processors, wait_for  # noqa: E402

PARTITIONS = 6
PROBE_EVERY_S = 0.02


def resumed_at(times: list[float], t0: float) -> float:
    """The end of the longest gap between consecutive `times` that ends after `t0` (counted
    from t0 when it began before): when writes moved again after the kill's stall."""
    best, end = -1.0, t0
    for before, after in zip(times, times[1:], strict=False):
        if after > t0 and after - max(before, t0) > best:
            best, end = after - max(before, t0), after
    return end


def longest_gap(times: list[float], t0: float, t1: float) -> float:
    window = [t0, *(t for t in times if t0 < t < t1)]
    return max((b - a for a, b in zip(window, window[1:], strict=False)), default=t1 - t0)


class Recorder:
    """Times of advances per key (partition, or "rows"), appended from the pollers' threads."""

    def __init__(self) -> None:
        self.times: dict[object, list[float]] = defaultdict(list)
        self.lock = threading.Lock()

    def mark(self, key: object, moment: float) -> None:
        with self.lock:
            self.times[key].append(moment)

    def resumed(self, t0: float) -> float:
        with self.lock:
            return max(resumed_at(times, t0) for times in self.times.values()) - t0

    def stall(self, t0: float, t1: float) -> float:
        with self.lock:
            return max(longest_gap(times, t0, t1) for times in self.times.values())


class Background:
    """An asyncio loop on a thread running the probes until stopped."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stopping = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tasks: list[concurrent.futures.Future[None]] = []

    def run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        for task in self.tasks:
            task.result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


async def probe_writes(bootstrap: str, topic: str, acks: Recorder, stopping: asyncio.Event) -> None:
    """The bare producer: a record to every partition each PROBE_EVERY_S, acks timed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                                linger_ms=0)
    await producer.start()

    async def one(partition: int) -> None:
        await producer.send_and_wait(topic, b"probe", partition=partition)
        acks.mark(partition, time.monotonic())

    pending: set[asyncio.Task[None]] = set()
    try:
        while not stopping.is_set():
            for partition in range(PARTITIONS):
                task = asyncio.ensure_future(one(partition))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(PROBE_EVERY_S)
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await producer.stop()


async def poll_watermarks(bootstrap: str, topic: str, moves: Recorder,
                          stopping: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    await consumer.start()
    partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    last: dict[TopicPartition, int] = {}
    try:
        while not stopping.is_set():
            try:
                offsets = await asyncio.wait_for(consumer.end_offsets(partitions), 2)
            except Exception:  # a leaderless partition: polled again
                offsets = {}
            now = time.monotonic()
            for partition, offset in offsets.items():
                if offset > last.get(partition, -1):
                    last[partition] = offset
                    moves.mark(partition.partition, now)
            await asyncio.sleep(0.05)
    finally:
        await consumer.stop()


class Load(threading.Thread):
    """The SDK: step events at `rate` a second, paced on the clock."""

    def __init__(self, client: Client, rate: int, prefix: str) -> None:
        super().__init__(daemon=True)
        self.client, self.rate, self.prefix, self.sent = client, rate, prefix, 0
        self.stopping = threading.Event()

    def run(self) -> None:
        began = time.monotonic()
        while not self.stopping.is_set():
            self.client.record_step(flow_key="load", run_id=f"{self.prefix}-{self.sent // 10}",
                                    step_key=f"s{self.sent % 10}", status="completed")
            self.sent += 1
            ahead = began + self.sent / self.rate - time.monotonic()
            if ahead > 0:
                self.stopping.wait(ahead)


class RowWatch(threading.Thread):
    def __init__(self, processors: RunningProcessors, prefix: str, rows: Recorder) -> None:
        super().__init__(daemon=True)
        self.processors, self.prefix, self.rows = processors, prefix, rows
        self.stopping = threading.Event()

    def count(self) -> int:
        (row,) = self.processors.rows(
            "SELECT uniqExact(event_id) AS n FROM events WHERE startsWith(run_id, {p:String})",
            p=f"{self.prefix}-")
        return int(row["n"])

    def run(self) -> None:
        last = -1
        while not self.stopping.wait(0.1):
            count = self.count()
            if count > last:
                last = count
                self.rows.mark("rows", time.monotonic())


def scenario(cluster: LocalCluster, settings: Settings, processors: RunningProcessors,
             args: argparse.Namespace, controlled: bool) -> None:
    name = "controlled shutdown" if controlled else "SIGKILL"
    prefix = f"bench-{'shutdown' if controlled else 'kill'}"
    acks, moves, rows = Recorder(), Recorder(), Recorder()
    background = Background()
    background.run(probe_writes(cluster.bootstrap, "bench.probe", acks, background.stopping))
    background.run(poll_watermarks(cluster.bootstrap, settings.topics.events, moves,
                                   background.stopping))
    with Client(settings=settings) as client:
        load = Load(client, args.rate, prefix)
        watch = RowWatch(processors, prefix, rows)
        load.start()
        watch.start()
        time.sleep(args.before_s)  # a steady state to lose
        node = cluster.leading_node(settings.topics.events)
        controller = cluster.active_controller()
        t0 = time.monotonic()
        (cluster.shutdown if controlled else cluster.kill)(node)
        stopped_in = time.monotonic() - t0
        time.sleep(args.after_s)
        t1 = time.monotonic()
        load.stopping.set()
        load.join()
        client.flush(120)
        stats = client.stats()
    background.stop()
    wait_for(lambda: watch.count() >= load.sent, timeout=120, what="every event in ClickHouse")
    watch.stopping.set()
    watch.join()
    landed = watch.count()
    print(f"\n{name} of node {node} (active controller: {controller}; "
          f"{'it exited' if controlled else 'killed'} in {stopped_in:.1f}s), "
          f"{args.rate} events/s")
    print(f"  events sent {load.sent}, in ClickHouse {landed}, lost {load.sent - landed} "
          f"(SDK: dropped {stats.dropped}, failed {stats.failed}, retried {stats.retried})")
    if controlled:
        print(f"  longest stall: Kafka {acks.stall(t0, t1):.2f}s, SDK "
              f"{moves.stall(t0, t1):.2f}s, rows {rows.stall(t0, t1):.2f}s (goal <= 1 s)")
        return
    kafka, sdk, moved = acks.resumed(t0), moves.resumed(t0), rows.resumed(t0)
    print(f"  every partition writable again: Kafka (bare producer) {kafka:.2f}s, "
          f"SDK {sdk:.2f}s = {sdk / kafka:.2f}x (goal <= 1.2x)")
    print(f"  ClickHouse rows moving again: {moved:.2f}s = {moved / kafka:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--before-s", type=float, default=8.0)
    parser.add_argument("--after-s", type=float, default=25.0)
    args = parser.parse_args()
    base = load_settings()
    with tempfile.TemporaryDirectory(prefix="steplog-failover-") as scratch:
        directory = Path(scratch)
        cluster = LocalCluster(directory / "kafka", [free_port() for _ in range(3)],
                               heap=base.broker_heap, version=base.kafka_version,
                               cache_dir=base.cache_dir)
        began = time.monotonic()
        cluster.start()
        print(f"3-node cluster on {cluster.bootstrap} in {time.monotonic() - began:.1f}s")
        try:
            settings = load_settings(
                kafka_bootstrap=cluster.bootstrap, data_dir=directory / "steplog",
                clickhouse_dsn=f"chdb://{directory / 'clickhouse'}", sql_port=free_port(),
                health_port=free_port(), topic_prefix="bench.", events_partitions=PARTITIONS,
            )
            asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
            asyncio.run(_create_probe_topic(cluster.bootstrap))
            processors = start_processors(settings, directory / "processors.log")
            try:
                scenario(cluster, settings, processors, args, controlled=False)
                for node_id in cluster.node_ids:
                    cluster.restart(node_id)  # the killed one; a no-op for the others
                wait_for(lambda: _in_sync(cluster.bootstrap, settings.topics.events),
                         timeout=120, what="every replica back in sync")
                scenario(cluster, settings, processors, args, controlled=True)
            finally:
                processors.stop()
        finally:
            cluster.stop()


async def _create_probe_topic(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("bench.probe", PARTITIONS, 3,
                                            topic_configs={"min.insync.replicas": "2"})])
    finally:
        await admin.close()


def _in_sync(bootstrap: str, topic: str) -> bool:
    async def check() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        return all(len(part["isr"]) == 3 for part in described["partitions"])

    return asyncio.run(check())


if __name__ == "__main__":
    main()
