"""The instrumentation pipeline end to end: SDK -> Kafka -> processors -> ClickHouse, in one run.

Starts its own Kafka broker (free loopback port, temporary directory) and, like the test suite,
`steplog processors` as a child process with its own chDB path and SQL endpoint; stops every
process it started at the end, also on error. Each figure is printed beside its baseline,
measured in the same run:

- throughput: `--events` step events from the SDK (runs of `--steps` instrumented steps,
  `run.step` around a no-op, step.started + step.completed each) until they are visible through
  the processors' SQL endpoint (clickhouse-connect's HTTP client): every event in `events` and
  every run in `runs_current` with all its events folded. Time from the first `run.step` to
  the poll that sees them all. Also the SDK's own part: send + flush of the same events.
- raw floor: the same SDK events produced to a fresh topic first; then a plain aiokafka consumer
  in a child process (`--floor-consumer`, it owns its own chDB path) reads them all and inserts
  them raw (ids, type, run, time, the event's bytes as String; json.loads, no validation, no
  fold) in 10,000-row batches through clickhouse-connect; from its start to its last insert.
  The ratio ours/floor is what validation, the fold, the run states and the projection rows
  cost over the least any consumer must do.
- lag: runs sent at a paced rate, half the measured throughput, for `--lag-seconds`; a poller
  thread queries the SQL endpoint every `--poll-ms` for runs whose last event is visible;
  latency = that poll's start - the moment the run's last step returned (an upper bound, the
  poll interval is the resolution). p50 / p99 / max over every run.
- replay: the processors are stopped and `steplog replay` (a child process: it opens the chDB
  path) rebuilds the projections from the whole log; its events/s against the live rate.
  `--replay-processes 1,2` replays once per number of fold processes (the baseline of one
  beside the default, in the same run).
- memory: the SDK's buffer bound and this (sending) process's peak RSS; the processors' and their
  children's (the store process, chDB inside)
  peak RSS (VmHWM, read before stopping them); the replay's and the floor consumer's.

`--rounds` repeats floor and throughput alternately (medians reported); `--profile` runs the
replay under cProfile and prints where its inserting process spends its time (the folds run
in its children); `--processors-command` measures a
candidate processors implementation in place of `steplog processors`. To A/B another checkout
(`git archive REV | tar -x -C DIR`, then a tree of links laid out like the installed package,
as scripts/typecheck.sh builds), run it with `python -P` and PYTHONPATH on that tree: without
-P the child's working directory (this checkout, whose `steplog/` is a package) comes first on
sys.path and the "other" checkout silently runs this one's code.

    .venv/bin/python benchmarks/pipeline.py
    .venv/bin/python benchmarks/pipeline.py --events 50000 --rounds 1 --skip-lag --skip-replay
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import queue
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client as SqlClient

from steplog import Client
from steplog.credentials import client_key
from steplog.server.admin_key import ensure_admin_key
from steplog.server.broker import LocalBroker
from steplog.server.health import read_group_members
from steplog.settings import Settings, child_environment, load_settings
from steplog.topics import ensure_topics, topic_specs

FLOOR_BATCH_ROWS = 10_000
DATABASE = "bench"
PROJECT = "bench"


def noop() -> None:
    return None


# ----------------------------------------------------------------------------- child processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def child_pids(pid: int) -> list[int]:
    """The live children of a process (the processors' store process, its resource tracker)."""
    try:
        return [int(child) for child in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def peak_rss_mib(pid: int, field: str = "VmHWM") -> float:
    """VmHWM (peak RSS) or another /proc status field of a live process, in MiB (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Processors:
    """`steplog processors` in a child process, with its SQL endpoint."""

    process: subprocess.Popen[bytes]
    sql: SqlClient
    log_path: Path

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[Any], timeout: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


PROCESSORS_COMMAND = [sys.executable, "-c", "from steplog.server.entry import main; main()", "processors"]


def start_processors(
    settings: Settings, log_path: Path, command: list[str] | None = None
) -> Processors:
    """Start the processors and wait (with a deadline) until their SQL endpoint answers, which
    it does to keys only: the admin key `steplog dev` would make, made here once."""
    ensure_admin_key(settings)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command or PROCESSORS_COMMAND,
            env=child_environment(settings), stdout=log, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"processors exited with {process.returncode}: "
                               f"{log_path.read_text(errors='replace')[-3000:]}")
        try:
            sql = clickhouse_connect.get_client(
                host="127.0.0.1", port=settings.sql_port, database=settings.clickhouse_database,
                password=client_key(settings) or "",
            )
            return Processors(process, sql, log_path)
        except Exception:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.1)


def start_another_processors(
    settings: Settings, scratch: Path, number: int, children: Children
) -> subprocess.Popen[bytes]:
    """One more `steplog processors` in the group, writing through the first one's SQL
    endpoint; `wait_group_spread` tells when it holds partitions."""
    own = settings.model_copy(update={
        "clickhouse_dsn": f"http://default:{client_key(settings)}@127.0.0.1:{settings.sql_port}",
        "data_dir": scratch / f"steplog-{number}", "sql_port": _free_port(),
    })
    with open(scratch / f"processors-{number}.log", "ab") as log:
        process = subprocess.Popen(PROCESSORS_COMMAND, env=child_environment(own),
                                   stdout=log, stderr=subprocess.STDOUT)
    children.add(process)
    return process


def wait_group_spread(settings: Settings, members: int, timeout: float = 120) -> None:
    """Until the fold's group is stable with `members` members, each holding partitions."""

    def spread() -> bool:
        found = asyncio.run(read_group_members(
            settings.kafka_bootstrap, settings.processors_group, settings.topics.events))
        return found.state == "Stable" and len(found.partitions) == members and all(
            found.partitions)

    deadline = time.monotonic() + timeout
    while not spread():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the processors' group did not spread over {members} members")
        time.sleep(0.2)


class Children:
    """Every child process started here, stopped at the end whatever happened."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[Any]] = []

    def add(self, process: subprocess.Popen[Any]) -> None:
        self.processes.append(process)

    def stop_all(self) -> None:
        for process in self.processes:
            try:
                stop_process(process, timeout=30)
            except Exception as exc:  # keep stopping the others
                print(f"could not stop pid {process.pid}: {exc!r}", file=sys.stderr)


# ------------------------------------------------------------------------------------ the SDK


def send_runs(client: Client, flow: str, runs: int, steps: int, prefix: str) -> None:
    """`runs` runs of `steps` instrumented no-op steps (2 events each)."""
    keys = [f"step-{n}" for n in range(steps)]
    for index in range(runs):
        run = client.run(flow, run_id=f"{prefix}{index:08d}")
        for key in keys:
            run.step(key, noop)


def sdk_client(settings: Settings, topic: str) -> Client:
    return Client(project=PROJECT, bootstrap=settings.kafka_bootstrap, topic=topic,
                  on_error=lambda exc: print(f"send error: {exc!r}", file=sys.stderr))


# ----------------------------------------------------------------------------- measurements


@dataclass
class Throughput:
    seconds: float
    send_seconds: float
    events: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def counts(sql: SqlClient, flow: str, events_per_run: int) -> tuple[int, int]:
    """(events of `flow` in `events`, runs of `flow` in `runs_current` with all their events
    folded)."""
    result = sql.query(
        f"SELECT (SELECT count() FROM events FINAL WHERE project = '{PROJECT}' AND flow = '{flow}'),"
        f" (SELECT count() FROM runs_current WHERE project = '{PROJECT}' AND flow = '{flow}'"
        f"  AND version >= {events_per_run})"
    )
    events, runs = result.result_rows[0]
    return int(events), int(runs)


def wait_visible(
    sql: SqlClient, flow: str, events: int, runs: int, events_per_run: int, timeout: float
) -> float:
    """Poll until every event and run of `flow` is visible; the time.monotonic() it was.

    The cheap query (events without FINAL: a count on the primary key's prefix) runs every
    0.1 s until the count is reached, then the exact one (events FINAL and runs_current, i.e.
    runs FINAL) until it holds: FINAL queries in a tight loop would take CPU from the
    processors being measured (the SQL endpoint runs in their process).
    """
    deadline = time.monotonic() + timeout
    while True:
        began = time.monotonic()
        (seen,) = sql.query(
            f"SELECT count() FROM events WHERE project = '{PROJECT}' AND flow = '{flow}'"
        ).result_rows[0]
        if int(seen) >= events:
            break
        if began > deadline:
            raise RuntimeError(f"{flow}: only {seen} of {events} events after {timeout}s")
        time.sleep(max(0.0, 0.1 - (time.monotonic() - began)))
    while True:
        began = time.monotonic()
        exact = counts(sql, flow, events_per_run)
        if exact[0] >= events and exact[1] >= runs:
            return began  # visible when this query started, at the latest
        if began > deadline:
            raise RuntimeError(f"{flow}: only {exact} of ({events}, {runs}) after {timeout}s")
        time.sleep(max(0.0, 0.05 - (time.monotonic() - began)))


def measure_ours(
    settings: Settings, processors: Processors, flow: str, runs: int, steps: int
) -> Throughput:
    client = sdk_client(settings, settings.topics.events)
    try:
        client.run("connect", run_id="connect").step("connect", noop)  # connect, untimed
        client.flush(60)
        began = time.monotonic()
        send_runs(client, flow, runs, steps, prefix=f"{flow}-")
        client.flush(300)
        sent = time.monotonic()
        done = wait_visible(processors.sql, flow, runs * steps * 2, runs, steps * 2, 600)
        stats = client.stats()
        if stats.dropped or stats.failed:
            print(f"  warning: {flow}: SDK dropped {stats.dropped}, failed {stats.failed}")
    finally:
        client.close()
    return Throughput(done - began, sent - began, runs * steps * 2)


def measure_floor(
    settings: Settings, scratch: Path, children: Children, round_: int, runs: int, steps: int
) -> tuple[Throughput, float]:
    """The same SDK events to a fresh topic first; then the floor consumer reads them all and
    inserts them raw. (throughput from its start to its last insert, its peak RSS in MiB)."""
    floor = settings.model_copy(update={"topic_prefix": f"floor{round_}."})
    asyncio.run(ensure_topics(floor.kafka_bootstrap, topic_specs(floor)))
    client = sdk_client(settings, floor.topics.events)
    try:
        began = time.monotonic()
        send_runs(client, "checkout", runs, steps, prefix="floor-")
        client.flush(300)
        sent = time.monotonic()
    finally:
        client.close()
    events = runs * steps * 2
    process = subprocess.Popen(
        [sys.executable, __file__, "--floor-consumer", "--bootstrap", floor.kafka_bootstrap,
         "--topic", floor.topics.events, "--dsn", f"chdb://{scratch / f'floor{round_}'}",
         "--events", str(events)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    children.add(process)
    lines = _line_reader(process)
    ready = _expect(lines, "ready", process, 120).split()
    done = _expect(lines, "done", process, 600).split()
    process.wait(timeout=60)
    if int(done[2]) != events:
        raise RuntimeError(f"floor consumer inserted {done[2]} rows, not {events}")
    # Both moments from the consumer's own clock: from assigned (chDB open, table created)
    # to its last insert returned.
    return Throughput(float(done[1]) - float(ready[1]), sent - began, events), float(done[3])


def _line_reader(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put("")  # end of output

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _expect(lines: queue.Queue[str], word: str, process: subprocess.Popen[str],
            timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"floor consumer: no {word!r} in {timeout}s: {seen[-20:]}") from None
        if line == "" and process.poll() is not None:
            raise RuntimeError(f"floor consumer exited ({process.returncode}): {seen[-20:]}")
        if line.startswith(word):
            return line
        seen.append(line)


@dataclass
class Lag:
    rate: float
    runs: int
    latencies: list[float] = field(default_factory=list)
    missing: int = 0


def measure_lag(settings: Settings, processors: Processors, rate: float, seconds: float,
                steps: int, poll_ms: float) -> Lag:
    """Runs at `rate` events/s for `seconds`; per run, last step returned -> run row visible."""
    events_per_run = steps * 2
    runs_per_second = rate / events_per_run
    total = int(runs_per_second * seconds)
    sent_at: list[float] = [0.0] * total
    seen_at: list[float] = [0.0] * total
    sent_count = 0
    done_sending = threading.Event()
    sql = clickhouse_connect.get_client(
        host="127.0.0.1", port=settings.sql_port, database=settings.clickhouse_database,
        password=client_key(settings) or "",
    )

    def poll() -> None:
        low, interval = 0, poll_ms / 1000
        while low < total:
            began = time.monotonic()
            result = sql.query(
                f"SELECT run_id FROM runs WHERE project = '{PROJECT}' AND flow = 'lag' "
                f"AND run_id >= 'lag-{low:08d}' AND version >= {events_per_run}"
            )
            for (run_id,) in result.result_rows:
                index = int(run_id[4:])
                if not seen_at[index]:
                    seen_at[index] = began
            while low < total and seen_at[low]:
                low += 1
            if done_sending.is_set() and time.monotonic() - sent_at[sent_count - 1] > 60:
                return  # what is not visible a minute after the last send is missing
            time.sleep(max(0.0, interval - (time.monotonic() - began)))

    client = sdk_client(settings, settings.topics.events)
    poller = threading.Thread(target=poll, name="lag-poller", daemon=True)
    try:
        client.run("connect", run_id="connect").step("connect", noop)
        client.flush(60)
        keys = [f"step-{n}" for n in range(steps)]
        poller.start()
        began = time.monotonic()
        for index in range(total):
            due = began + index / runs_per_second
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            run = client.run("lag", run_id=f"lag-{index:08d}")
            for key in keys:
                run.step(key, noop)
            sent_at[index] = time.monotonic()
            sent_count = index + 1
        done_sending.set()
        achieved = total * events_per_run / (time.monotonic() - began)
        poller.join(timeout=seconds + 120)
    finally:
        done_sending.set()
        client.close()
    lag = Lag(achieved, total)
    for sent, seen in zip(sent_at, seen_at):
        if seen:
            lag.latencies.append(seen - sent)
        else:
            lag.missing += 1
    return lag


@dataclass
class Replay:
    processes: int | None
    events: int
    seconds: float
    wall_seconds: float
    peak_rss_mib: float
    output: str


def run_replay(
    settings: Settings, scratch: Path, profile: bool, processes: int | None
) -> Replay:
    """`steplog replay` in a child process on the stopped processors' chDB path, with
    `processes` fold processes (the default when None)."""
    options = [] if processes is None else ["--processes", str(processes)]
    command = [sys.executable, "-c", "from steplog.server.entry import main; main()", "replay",
               *options]
    if profile:
        script = scratch / "replay_profiled.py"
        script.write_text("from steplog.server.entry import main\nmain()\n")
        command = [sys.executable, "-m", "cProfile", "-o", str(scratch / "replay.prof"),
                   str(script), "replay", *options]
    began = time.monotonic()
    process = subprocess.Popen(command, env=child_environment(settings),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert process.stdout is not None
        output = process.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if process.returncode is None:
            process.kill()
            process.wait()
    wall = time.monotonic() - began
    match = re.search(r"folded (\d+) events .* in ([\d.]+)s", output)
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"steplog replay failed ({process.returncode}): {output[-3000:]}")
    return Replay(processes, int(match[1]), float(match[2]), wall, usage.ru_maxrss / 1024, output)


def print_profile(path: Path, top: int) -> None:
    import pstats

    stats = pstats.Stats(str(path))
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"\nreplay under cProfile (the inserting process only: the folds are its children), "
          f"total {total:.1f} s; top {top} by own time:")
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((own, cumulative, calls, f"{Path(filename).name}:{line}({name})"))
    for own, cumulative, calls, where in sorted(rows, reverse=True)[:top]:
        print(f"  own {own:6.2f} s {100 * own / total:5.1f}%  cum {cumulative:6.2f} s  "
              f"{calls:>9} calls  {where}")
    print(f"  top {top} by cumulative time:")
    for own, cumulative, calls, where in sorted(rows, key=lambda r: r[1], reverse=True)[:top]:
        print(f"  cum {cumulative:6.2f} s {100 * cumulative / total:5.1f}%  own {own:6.2f} s  "
              f"{calls:>9} calls  {where}")


# ---------------------------------------------------------------------------- floor consumer


def floor_consumer(bootstrap: str, topic: str, dsn: str, expected: int) -> None:
    """Child process: consume `topic` from the start and insert its events raw into chDB."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from steplog.server.gc_tuning import tune_gc_for_batches
    from steplog.projections.clickhouse import open_clickhouse
    from steplog.topics import topic_partitions

    tune_gc_for_batches()  # as the processors do: the floor is not handicapped by the collector
    client = open_clickhouse(dsn)
    client.command("CREATE DATABASE IF NOT EXISTS floor")
    client.command(
        "CREATE TABLE IF NOT EXISTS floor.events (event_id String, type LowCardinality(String),"
        " project LowCardinality(String), flow LowCardinality(String), run_id String,"
        " step_key String, seq UInt64, ts DateTime64(6, 'UTC'), payload String,"
        " log_partition UInt32, log_offset UInt64)"
        " ENGINE = MergeTree ORDER BY (project, flow, run_id, event_id)"
    )
    columns = ["event_id", "type", "project", "flow", "run_id", "step_key", "seq", "ts",
               "payload", "log_partition", "log_offset"]
    table = "floor.events"

    async def consume() -> None:
        partitions = await topic_partitions(bootstrap, topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, p) for p in partitions])
            await consumer.seek_to_beginning()
            print(f"ready {time.monotonic():.6f}", flush=True)
            rows: list[tuple[Any, ...]] = []
            inserted = 0
            loads, parse_ts = json.loads, datetime.fromisoformat
            while inserted < expected:
                fetched = await consumer.getmany(timeout_ms=20, max_records=FLOOR_BATCH_ROWS)
                for tp, records in fetched.items():
                    for record in records:
                        event = loads(record.value)
                        rows.append((
                            event["event_id"], event["type"], event["project"], event["flow"],
                            event["run_id"], event.get("step_key") or "", event["seq"],
                            parse_ts(event["ts"]), record.value, tp.partition, record.offset,
                        ))
                while len(rows) >= FLOOR_BATCH_ROWS or (rows and not fetched):
                    batch, rows = rows[:FLOOR_BATCH_ROWS], rows[FLOOR_BATCH_ROWS:]
                    await asyncio.to_thread(client.insert, table, batch, column_names=columns)
                    inserted += len(batch)
        finally:
            await consumer.stop()

    asyncio.run(consume())
    finished = time.monotonic()
    count = client.query(f"SELECT count() FROM {table}").result_rows[0][0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"done {finished:.6f} {count} {peak:.0f}", flush=True)


# ------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per throughput round")
    parser.add_argument("--steps", type=int, default=5, help="steps per run (2 events each)")
    parser.add_argument("--rounds", type=int, default=3, help="floor + throughput rounds")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the events topic")
    parser.add_argument("--lag-seconds", type=float, default=20.0)
    parser.add_argument("--poll-ms", type=float, default=50.0, help="lag poll interval")
    parser.add_argument("--skip-floor", action="store_true")
    parser.add_argument("--skip-lag", action="store_true")
    parser.add_argument("--skip-replay", action="store_true")
    parser.add_argument("--profile", action="store_true", help="cProfile the replay")
    parser.add_argument(
        "--replay-processes", type=lambda text: [int(n) for n in text.split(",")], default=[],
        help="replay once per number of fold processes given, e.g. 1,2 (default: once, with "
             "replay's default)",
    )
    parser.add_argument(
        "--state-memory-mb", type=int, default=None,
        help="STEPLOG_STATE_MEMORY_MB of the processors and replay (default: the setting's)",
    )
    parser.add_argument(
        "--processors", type=int, default=1, metavar="N",
        help="processors processes in one group: the first with the embedded engine and its "
        "SQL endpoint, the others writing through that endpoint (as to a ClickHouse server)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir (logs)")
    parser.add_argument(
        "--processors-command", metavar="CMD",
        help="run CMD (split like a shell) instead of `steplog processors`, with the same "
        "STEPLOG_* environment: to A/B a candidate implementation (it must serve SQL on "
        "STEPLOG_SQL_PORT and stop on SIGTERM)",
    )
    # The floor consumer's own mode (a child process of this script).
    parser.add_argument("--floor-consumer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_consumer:
        floor_consumer(args.bootstrap, args.topic, args.dsn, args.events)
        return

    # Expected noise: a fresh topic's leaders settle while the SDK already sends (aiokafka
    # retries), and the SQL endpoint refuses connections until the processors are up.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("clickhouse_connect").setLevel(logging.CRITICAL)
    base = load_settings()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(
        f"machine: nproc={os.cpu_count()} python={platform.python_version()} "
        f"kafka={base.kafka_version} heap={base.broker_heap} "
        f"mem={os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f}GiB"
    )
    with _scratch(args.keep) as scratch:
        broker = LocalBroker(scratch / "kafka", _free_port(), heap=base.broker_heap,
                             version=base.kafka_version, cache_dir=base.cache_dir)
        children = Children()
        broker.start()
        try:
            _run(args, broker.bootstrap, scratch, children)
        finally:
            children.stop_all()
            broker.stop()


@contextmanager
def _scratch(keep: bool) -> Iterator[Path]:
    if keep:
        path = Path(tempfile.mkdtemp(prefix="steplog-pipeline-bench-"))
        print(f"scratch dir (kept): {path}")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="steplog-pipeline-bench-") as scratch:
        yield Path(scratch)


def _run(args: argparse.Namespace, bootstrap: str, scratch: Path, children: Children) -> None:
    settings = load_settings(
        kafka_bootstrap=bootstrap, clickhouse_dsn=f"chdb://{scratch / 'clickhouse'}",
        clickhouse_database=DATABASE, topic_prefix="bench.", data_dir=scratch / "steplog",
        events_partitions=args.partitions, sql_port=_free_port(), project=PROJECT,
        **({} if args.state_memory_mb is None else {"state_memory_mb": args.state_memory_mb}),
    )
    asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
    steps = args.steps
    runs = args.events // (2 * steps)
    events = runs * steps * 2
    print(f"events: {events:,} per round ({runs:,} runs x {steps} steps x 2 events), "
          f"{args.partitions} partitions, {args.rounds} round(s)")

    command = shlex.split(args.processors_command) if args.processors_command else None
    if command:
        print(f"processors command: {shlex.join(command)}")
    processors = start_processors(settings, scratch / "processors.log", command)
    children.add(processors.process)
    if args.processors > args.partitions:
        raise SystemExit(f"--processors {args.processors}: more than the {args.partitions} "
                         "events partitions, the others would hold none")
    others = [start_another_processors(settings, scratch, number, children)
              for number in range(1, args.processors)]
    if others:
        wait_group_spread(settings, args.processors)
        print(f"{args.processors} processors processes share the events partitions")
    warm = max(100, runs // 20)
    began = time.monotonic()
    client = sdk_client(settings, settings.topics.events)
    send_runs(client, "warmup", warm, steps, prefix="warm-")
    client.close()
    wait_visible(processors.sql, "warmup", warm * steps * 2, warm, steps * 2, 300)
    print(f"processors up; warm-up of {warm * steps * 2:,} events visible after "
          f"{time.monotonic() - began:.1f} s (consumer group join included)")
    warm_rss = sum(peak_rss_mib(pid, "VmRSS")
                   for pid in [processors.process.pid, *(other.pid for other in others)])

    ours: list[Throughput] = []
    floors: list[Throughput] = []
    floor_rss: list[float] = []
    for round_ in range(args.rounds):
        if not args.skip_floor:
            floor, rss = measure_floor(settings, scratch, children, round_, runs, steps)
            floors.append(floor)
            floor_rss.append(rss)
            print(f"round {round_ + 1} floor: {floor.rate:9,.0f} events/s ({floor.seconds:.2f} s "
                  f"to consume and insert; SDK send+flush before it {floor.send_seconds:.2f} s)",
                  flush=True)
        result = measure_ours(settings, processors, f"tp{round_}", runs, steps)
        ours.append(result)
        print(f"round {round_ + 1} ours:  {result.rate:9,.0f} events/s ({result.seconds:.2f} s "
              f"from first send to visible; SDK send+flush {result.send_seconds:.2f} s of it)",
              flush=True)

    ours_rate = statistics.median(t.rate for t in ours)
    lag: Lag | None = None
    if not args.skip_lag:
        lag = measure_lag(settings, processors, ours_rate / 2, args.lag_seconds, steps,
                          args.poll_ms)
        print(f"lag: {lag.runs:,} runs at {lag.rate:,.0f} events/s", flush=True)

    # With more than one processors process: their sums (each one's share of the states).
    pids = [processors.process.pid, *(other.pid for other in others)]
    processors_rss = sum(peak_rss_mib(pid) for pid in pids)
    store_rss = sum(peak_rss_mib(child) for child in child_pids(processors.process.pid))
    end_rss = sum(peak_rss_mib(pid, "VmRSS") for pid in pids)
    runs_folded = runs * len(ours) + (lag.runs if lag else 0)
    for other in others:
        stop_process(other)
    processors.stop()
    if processors.process.returncode not in (0, -signal.SIGTERM):
        print(f"  warning: processors exited with {processors.process.returncode}")

    replays: list[Replay] = []
    if not args.skip_replay:
        replays = [run_replay(settings, scratch, args.profile, processes)
                   for processes in args.replay_processes or [None]]

    # ------------------------------------------------------------------------- the figures
    print("\n== figures (median of rounds; min-max)")
    send_rates = [t.events / t.send_seconds for t in ours + floors]
    print(f"SDK -> Kafka (run.step loop + flush, one thread): "
          f"{statistics.median(send_rates):,.0f} events/s  ({_span(send_rates)}; "
          "while the processors fold: the low end)")
    ours_rates = [t.rate for t in ours]
    print(f"throughput SDK -> visible in SQL: {ours_rate:,.0f} events/s  ({_span(ours_rates)})"
          f"  target >= 30,000: {_verdict(ours_rate >= 30_000)}")
    if floors:
        floor_rate = statistics.median(t.rate for t in floors)
        print(f"raw floor (plain consumer, raw insert):  {floor_rate:,.0f} events/s  "
              f"({_span([t.rate for t in floors])})")
        ratios = [o.rate / f.rate for o, f in zip(ours, floors)]
        print(f"ours / floor: {statistics.median(ratios):.2f}x  (per round: "
              f"{', '.join(f'{r:.2f}' for r in ratios)})  target >= 0.5x: "
              f"{_verdict(statistics.median(ratios) >= 0.5)}")
    if lag is not None:
        if lag.latencies:
            ordered = sorted(lag.latencies)
            p50 = ordered[len(ordered) // 2]
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            print(f"lag at {lag.rate:,.0f} events/s (half the throughput), {lag.runs:,} runs, "
                  f"poll every {args.poll_ms:.0f} ms: p50 {p50 * 1000:.0f} ms  "
                  f"p99 {p99 * 1000:.0f} ms  max {ordered[-1] * 1000:.0f} ms  "
                  f"missing {lag.missing}  target p99 <= 1 s: {_verdict(p99 <= 1.0)}")
        else:
            print(f"lag: no run became visible ({lag.missing} missing)")
    for replay in replays:
        replay_rate = replay.events / replay.seconds
        folds = "default" if replay.processes is None else replay.processes
        print(f"replay ({folds} fold processes): {replay.events:,} events in "
              f"{replay.seconds:.1f} s = {replay_rate:,.0f} events/s (process wall "
              f"{replay.wall_seconds:.1f} s); vs live {ours_rate:,.0f}: "
              f"{replay_rate / ours_rate:.2f}x  target >= 3x: "
              f"{_verdict(replay_rate >= 3 * ours_rate)}")
    bound = getattr(Client(project=PROJECT, bootstrap=bootstrap, topic="x").sink,
                    "max_buffer_bytes", 0)
    own_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"memory: SDK buffer bound {bound / 2**20:.0f} MiB; peak RSS of the sending process "
          f"{own_rss:.0f} MiB; processors peak RSS (VmHWM) {processors_rss:.0f} MiB, their "
          f"children (the store process with chDB) {store_rss:.0f} MiB  target <= 1024 MiB: "
          f"{_verdict(processors_rss <= 1024)} (processors), "
          f"{_verdict(processors_rss + store_rss <= 1024)} (with the children)")
    extra = []
    for replay in replays:
        extra.append(f"replay child {replay.peak_rss_mib:.0f} MiB (its fold processes not "
                     "counted)")
    if floor_rss:
        extra.append(f"floor consumer {max(floor_rss):.0f} MiB")
    if extra:
        print("        peak RSS of " + "; ".join(extra))
    print(f"        processors RSS after warm-up {warm_rss:.0f} MiB, at the end {end_rss:.0f} MiB "
          f"after {runs_folded:,} more runs: {(end_rss - warm_rss) / runs_folded * 10_000:.0f} MiB "
          "per 10,000 runs (run states in memory up to STEPLOG_STATE_MEMORY_MB, then on disk; "
          "the allocator also keeps the batches' peak)")
    if replays and args.profile:
        print_profile(scratch / "replay.prof", 25)


def _span(values: list[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    main()
