"""What one Kafka hop costs on this machine, with nothing of Steplog's in it: the floor under
every hop of a workflow's resume (BENCHMARKS.md, "Durable workflows vs DBOS").

A ping-pong between two processes over a local broker (started here on a free loopback port in
a temporary directory, stopped at the end): this process sends a ping (aiokafka producer,
acks=all, linger 0, as Steplog's producers), an echo child process consumes it (`getmany`, as
Steplog's consumers) and sends a pong, and this process consumes the pong. A round trip is two
hops; each ping waits for the previous pong, then 5 ms. The first `--warmup` round trips are
not counted.

    .venv/bin/python benchmarks/kafka_hop.py --trips 300
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_PING, _PONG = "hop.ping", "hop.pong"


async def echo(bootstrap: str, fetch_max_wait_ms: int) -> None:
    """The child: every ping back as a pong."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(_PING, bootstrap_servers=bootstrap, group_id="hop-echo",
                                auto_offset_reset="latest", fetch_max_wait_ms=fetch_max_wait_ms)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await consumer.start()
    await producer.start()
    await consumer.getmany(timeout_ms=1000)  # joined and positioned
    print("ready", flush=True)
    try:
        while True:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    await producer.send(_PONG, record.value)
    finally:
        await consumer.stop()
        await producer.stop()


def start_echo(bootstrap: str, fetch_max_wait_ms: int) -> subprocess.Popen[str]:
    """The echo child, once it is positioned at the end of the ping topic."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--echo", bootstrap, "--fetch-max-wait-ms",
         str(fetch_max_wait_ms)],
        stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        child.kill()
        child.wait()
        raise RuntimeError("the echo process did not start")
    return child


async def ping_pong(bootstrap: str, trips: int, warmup: int, fetch_max_wait_ms: int) -> list[float]:
    """Round trips in ms, warm-up dropped (the echo child runs already)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    consumer = AIOKafkaConsumer(_PONG, bootstrap_servers=bootstrap, group_id="hop-main",
                                auto_offset_reset="latest", fetch_max_wait_ms=fetch_max_wait_ms)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await consumer.start()
    await producer.start()
    try:
        await consumer.getmany(timeout_ms=1000)  # joined and positioned
        trips_ms: list[float] = []
        for _ in range(warmup + trips):
            began = time.perf_counter()
            await producer.send(_PING, b"x")
            deadline = began + 10
            while not await consumer.getmany(timeout_ms=1000):
                if time.perf_counter() > deadline:
                    raise RuntimeError("no pong within 10 s")
            trips_ms.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(0.005)
        return trips_ms[warmup:]
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--trips", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=500,
                        help="the consumers' (aiokafka's default: 500)")
    parser.add_argument("--echo", metavar="BOOTSTRAP", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # A fresh broker elects its group coordinator while the consumers join: aiokafka logs
    # every poll of that moment, which is not a failure.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    if args.echo:
        asyncio.run(echo(args.echo, args.fetch_max_wait_ms))
        return

    from steplog.server.broker import LocalBroker
    from steplog.settings import load_settings
    from steplog.topics import TopicSpec, ensure_topics

    base = load_settings()
    with tempfile.TemporaryDirectory(prefix="steplog-hop-") as scratch:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        broker = LocalBroker(Path(scratch) / "kafka", port, heap=base.broker_heap,
                             version=base.kafka_version, cache_dir=base.cache_dir)
        broker.start()
        try:
            asyncio.run(ensure_topics(
                broker.bootstrap, [TopicSpec(name, 1, "-", 1) for name in (_PING, _PONG)]
            ))
            echo_child = start_echo(broker.bootstrap, args.fetch_max_wait_ms)
            try:
                trips = asyncio.run(
                    ping_pong(broker.bootstrap, args.trips, args.warmup, args.fetch_max_wait_ms)
                )
            finally:
                echo_child.kill()
                echo_child.wait()
        finally:
            broker.stop()
    cuts = statistics.quantiles(trips, n=100)
    print(f"kafka={base.kafka_version} fetch_max_wait_ms={args.fetch_max_wait_ms} "
          f"round trips={len(trips)}")
    print(f"round trip (2 hops): p50 {statistics.median(trips):.2f} ms  p99 {cuts[98]:.2f} ms")
    print(f"one hop (half):      p50 {statistics.median(trips) / 2:.2f} ms")


if __name__ == "__main__":
    main()
