"""Finished runs leaving the processors' state (STEPLOG_STATE_RETENTION; docs/processors.md,
"State retention"): state size, start-up and rebalance time bounded by the runs of the window.

Starts its own Kafka broker and `steplog processors` (pipeline.py's helpers; every process it
starts is stopped at the end), then sends `--runs` runs (two instrumented no-op steps and
`run.complete()`: 5 events each) in chunks, as fast as the processors fold them, with a short
retention (`--retention`, on the log's time: the events topic is stamped by the broker, so
seconds of the clock here). After each chunk, once the processors have folded it, it prints:

- the processors' RSS (their own process: the run states live there; the store process
  that owns chDB is not counted);
- the run store's disk: the SQLite scratch file the states beyond memory go to (unlinked at
  once, so measured through the processors' open file descriptors);
- the runs changelog on the broker's disk, and its records since the start (end offsets).
  The changelog is compacted only in closed segments: for the benchmark its segments roll
  every `--segment-s` seconds and the cleaner runs as soon as it may (as an operator with a
  short retention would set them), so tombstoned runs leave the disk too.

Then start-up (the processors restarted: from the process's start until a run sent then is
visible, the changelog's recovery included) and rebalance (a second processors process joins
the group: until the group is stable over both and a run sent then is visible).

    .venv/bin/python benchmarks/retention.py                    # 1,000,000 runs
    .venv/bin/python benchmarks/retention.py --runs 100000 --retention ''   # the baseline
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pipeline import (  # type: ignore[import-not-found]  # benchmarks/, run as a script
    PROJECT,
    Children,
    Processors,
    _free_port,
    _scratch,
    noop,
    peak_rss_mib,
    sdk_client,
    start_another_processors,
    start_processors,
    wait_group_spread,
)
from steplog import kafka
from steplog.projections.log_reader import topic_end_offsets
from steplog.server.broker import LocalBroker
from steplog.settings import Settings, load_settings
from steplog.topics import ensure_topics, topic_specs

CHUNK_RUNS = 20_000
EVENTS_PER_RUN = 5


def send_runs(settings: Settings, flow: str, first: int, count: int) -> None:
    client = sdk_client(settings, settings.topics.events)
    for number in range(first, first + count):
        run = client.run(flow, run_id=f"r{number:09d}")
        run.step("fetch", noop)
        run.step("store", noop)
        run.complete()
    client.close()


def events_visible(processors: Processors) -> int:
    (count,) = processors.sql.query(
        f"SELECT count() FROM events WHERE project = '{PROJECT}'").result_rows[0]
    return int(count)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def scratch_disk_bytes(pid: int, tmpdir: Path) -> int:
    """Bytes of the files under `tmpdir` the process holds open (deleted ones included)."""
    total = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(str(tmpdir)):
                total += fd.stat().st_size
        except OSError:
            continue
    return total


def changelog_disk_bytes(kafka_dir: Path, topic: str) -> int:
    """Blocks in use, not sizes: the broker preallocates each segment's index files (10 MiB,
    sparse)."""
    return sum(path.stat().st_blocks * 512
               for path in kafka_dir.rglob(f"{topic}-*/*") if path.is_file())


async def tune_changelog(settings: Settings, topic: str, segment_s: float) -> None:
    admin = kafka.admin_client(settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {
            "cleanup.policy": "compact", "segment.ms": str(int(segment_s * 1000)),
            "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "0",
            "max.compaction.lag.ms": str(int(segment_s * 1000)),
            # (A legacy alter replaces every config: the stack's own, again.)
            "max.message.bytes": str(max(settings.max_event_bytes * 2, 4 << 20)),
        })])
    finally:
        await admin.close()


def probe(settings: Settings, processors: Processors, name: str, timeout: float = 300) -> None:
    """One run sent now, until it is visible."""
    send_runs(settings, name, 0, 1)

    def seen() -> bool:
        (count,) = processors.sql.query(
            f"SELECT count() FROM runs_current WHERE flow = '{name}'").result_rows[0]
        return int(count) == 1

    wait_until(seen, timeout, f"the probe run {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--retention", default="20s",
                        help="STEPLOG_STATE_RETENTION ('' for none: the baseline)")
    parser.add_argument("--horizon", default="10s", help="STEPLOG_STATE_CLOSED_HORIZON")
    parser.add_argument("--state-memory-mb", type=int, default=16,
                        help="STEPLOG_STATE_MEMORY_MB (small: states go to disk early)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--segment-s", type=float, default=10.0,
                        help="the runs changelog's segment.ms, in seconds")
    args = parser.parse_args()
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    base = load_settings()
    with _scratch(False) as scratch:
        broker = LocalBroker(scratch / "kafka", _free_port(), heap=base.broker_heap,
                             version=base.kafka_version, cache_dir=base.cache_dir)
        children = Children()
        broker.start()
        try:
            run(args, broker.bootstrap, scratch, children)
        finally:
            children.stop_all()
            broker.stop()


def run(args: argparse.Namespace, bootstrap: str, scratch: Path, children: Children) -> None:
    tmpdir = scratch / "tmp"
    tmpdir.mkdir()
    os.environ["TMPDIR"] = str(tmpdir)  # the processors' scratch file (their environment)
    settings = load_settings(
        kafka_bootstrap=bootstrap, clickhouse_dsn=f"chdb://{scratch / 'clickhouse'}",
        clickhouse_database="bench", topic_prefix="bench.", data_dir=scratch / "steplog",
        events_partitions=args.partitions, sql_port=_free_port(), project=PROJECT,
        state_memory_mb=args.state_memory_mb, state_retention=args.retention,
        state_closed_horizon=args.horizon,
    )
    asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
    changelog = f"{settings.processors_group}-runs-changelog"
    log = scratch / "processors.log"
    processors = start_processors(settings, log)
    children.add(processors.process)
    probe(settings, processors, "warmup")
    asyncio.run(tune_changelog(settings, changelog, args.segment_s))
    print(f"{args.runs:,} runs of {EVENTS_PER_RUN} events, retention {args.retention or 'none'}"
          f" (horizon {args.horizon}), state memory {args.state_memory_mb} MiB, "
          f"{args.partitions} partitions")
    print(f"{'runs':>10} {'s':>7} {'RSS MiB':>8} {'disk MiB':>9} {'changelog MiB':>14} "
          f"{'changelog records':>18}")
    began = time.monotonic()
    sent = 0
    while sent < args.runs:
        count = min(CHUNK_RUNS, args.runs - sent)
        send_runs(settings, "bench", sent, count)
        sent += count
        wait_until(lambda: events_visible(processors) >= sent * EVENTS_PER_RUN, 600,
                   f"{sent:,} runs folded")
        records = sum(asyncio.run(topic_end_offsets(settings.kafka_bootstrap, changelog)))
        print(f"{sent:>10,} {time.monotonic() - began:>7.1f} "
              f"{peak_rss_mib(processors.process.pid, 'VmRSS'):>8.0f} "
              f"{scratch_disk_bytes(processors.process.pid, tmpdir) / 2**20:>9.1f} "
              f"{changelog_disk_bytes(scratch / 'kafka', changelog) / 2**20:>14.1f} "
              f"{records:>18,}", flush=True)
    print(f"peak RSS of the processors: {peak_rss_mib(processors.process.pid):.0f} MiB")

    processors.stop()
    restarted = time.monotonic()
    processors = start_processors(settings, log)
    children.add(processors.process)
    probe(settings, processors, "after_restart")
    print(f"start-up: {time.monotonic() - restarted:.1f} s from the process's start to a new "
          "run visible (changelog recovery included)")

    joined = time.monotonic()
    start_another_processors(settings, scratch, 1, children)
    wait_group_spread(settings, 2)
    probe(settings, processors, "after_rebalance")
    print(f"rebalance: {time.monotonic() - joined:.1f} s from a second process's start to the "
          "group spread over both and a new run visible")


if __name__ == "__main__":
    main()
