"""Durable workflows, Steplog next to DBOS Transact: latency, throughput, event-to-resume.

The same three measurements on both systems, in one run, printed side by side with ratios:

1. latency: a 10-step workflow (each step a trivial function returning a small value), from
   "start" to "result available to the caller"; --sequential runs one after another after
   --warmup runs (300 by default, for both systems: a broker just started is a JVM whose
   request path is not compiled yet; measured here, its CPU per request fell from about 0.4
   to 0.1-0.2 ms over its first 20,000 requests, and a deployed broker is long warm); p50
   and p99.
2. throughput: --runs 10-step workflows with --in-flight of them running at once; runs/s from
   the first start to the last result.
3. event-to-resume: a run parked on an event (DBOS: `DBOS.recv(topic)`; Steplog:
   `ctx.step.wait_for_event`), from the sender's call (`DBOS.send` / `client.send_event`) to
   the moment the workflow code runs again (the workflow returns time.perf_counter() taken
   right after the wait; CLOCK_MONOTONIC, one clock for every process of the machine).
   Runs park in batches of --park-batch; once a batch is parked (and --settle has passed) the
   events are sent one at a time, each after the previous run resumed; p50 and p99.

DBOS Transact runs in this process (it is a library: `DBOS.start_workflow` executes the
workflow on its thread pool; every step is a row in PostgreSQL) on a throwaway PostgreSQL
cluster on 127.0.0.1 (benchmarks/dbos_setup.sh). Steplog runs as it is deployed: a Kafka
broker (LocalBroker), `steplog processors` and a worker (`app.worker().run()`), each a child
process of this one; the client is in this process and waits for each result with
`RunHandle.result_async()` (DBOS: `handle.get_result()`). Each round measures DBOS, then
Steplog, so that neither system's servers compete with the other's for the cores; --rounds
alternate them and the medians of the rounds are reported.

After its figures, the Steplog phase traces --profile-runs more runs and waits hop by hop
(Kafka record timestamps of the commands, events and signals topics) and times each batch of
the processors (their methods wrapped in the child process, their code unchanged); CPU per run
of every process, and of the rest of the machine ("others": noise), is printed per phase.

    bash benchmarks/dbos_setup.sh install     # PostgreSQL if missing; .[bench] into .venv
    .venv/bin/python benchmarks/workflows_vs_dbos.py --rounds 3

(the script runs `dbos_setup.sh install` itself first; `--skip-install` skips that). Every
process it starts (PostgreSQL, broker, processors, worker) is stopped at the end, also on error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "benchmarks" / "dbos_setup.sh"
TARGETS = (
    "targets: Steplog 10-step p50 <= DBOS's; Steplog runs/s >= 4x DBOS's; "
    "resume p50 <= DBOS's and resume p99 <= 50 ms"
)


# --------------------------------------------------------------------------- figures


@dataclass
class Figures:
    """What one system measured."""

    system: str
    latency_ms: list[float] = field(default_factory=list)
    throughput: float = 0.0
    throughput_runs: int = 0
    throughput_seconds: float = 0.0
    resume_ms: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cpu_ms_per_run: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per phase ("latency", "throughput"): CPU ms (user + system) per run, per process."""


def p50(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p99(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def summary(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return (
        f"p50 {p50(values):7.2f} ms  p99 {p99(values):7.2f} ms  "
        f"(min {min(values):.2f}, max {max(values):.2f}, n={len(values)})"
    )


# --------------------------------------------------------------------------- CPU


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from 3 (state) on


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of a process (and its reaped children); with `children`, also of
    its live child processes (PostgreSQL's backends)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # utime, stime, cutime, cstime are fields 14-17 (index 11-14 from field 3)
    total = sum(int(v) for v in fields[11:15]) / _TICK
    if children:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                child = _stat_fields(int(entry.name))
                if child is not None and child[1] == str(pid):  # ppid is field 4
                    total += sum(int(v) for v in child[11:13]) / _TICK
    return total


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy (all cores; /proc/stat), in seconds."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


class CpuMeter:
    """CPU used by named processes between `begin()` and `end(runs)`, in ms per run, and by
    every other process of the machine ("others": work that is not this benchmark's, the
    noise the figures suffer)."""

    def __init__(self, processes: dict[str, tuple[int, bool]]) -> None:
        self.processes = processes  # name -> (pid, count live children)
        self._began: dict[str, float] = {}
        self._machine = 0.0

    def begin(self) -> None:
        self._began = {name: cpu_seconds(pid, children=kids)
                       for name, (pid, kids) in self.processes.items()}
        self._machine = machine_busy_seconds()

    def end(self, runs: int) -> dict[str, float]:
        machine = (machine_busy_seconds() - self._machine) * 1000 / runs
        used = {name: (cpu_seconds(pid, children=kids) - self._began[name]) * 1000 / runs
                for name, (pid, kids) in self.processes.items()}
        used["all"] = sum(used.values())
        used["others"] = max(machine - used["all"], 0.0)
        return used


# --------------------------------------------------------------------------- DBOS


def measure_dbos(args: argparse.Namespace, database_url: str, postmaster: int) -> Figures:
    """The three measurements on DBOS Transact, in this process."""
    from dbos import DBOS, DBOSConfig, WorkflowHandle  # type: ignore[import-not-found,unused-ignore]

    figures = Figures("DBOS")
    steps = args.steps
    parked_lock = threading.Lock()
    parked: list[str] = []

    # Registered by calling the decorators rather than with @ syntax: mypy --strict runs over
    # benchmarks/ in `make test`, where dbos (the bench extra) is not installed.
    def trivial_step(i: int) -> int:
        return i + 1

    trivial = DBOS.step()(trivial_step)

    def ten_steps_workflow(n: int) -> int:
        total = 0
        for i in range(n):
            total += trivial(i)
        return total

    ten_steps = DBOS.workflow()(ten_steps_workflow)

    def waiter_workflow() -> float:
        with parked_lock:
            parked.append(DBOS.workflow_id or "")
        DBOS.recv("go", timeout_seconds=600)
        return time.perf_counter()  # the workflow code runs again: the moment measured

    waiter = DBOS.workflow()(waiter_workflow)

    config: DBOSConfig = {
        "name": "steplog-bench",
        "system_database_url": database_url,
        "log_level": "WARNING",
        "sys_db_pool_size": args.dbos_pool_size,
        # 200 workflows in flight plus their 200 callers share the pool: SQLAlchemy's
        # checkout is not first-come first-served, and its 30 s timeout fails an unlucky one.
        "db_engine_kwargs": {"pool_timeout": 600},
    }
    DBOS(config=config)
    DBOS.launch()
    meter = CpuMeter({"DBOS (this process)": (os.getpid(), False),
                      "PostgreSQL": (postmaster, True)})
    try:
        expected = sum(i + 1 for i in range(steps))

        def one_run() -> float:
            began = time.perf_counter()
            handle = DBOS.start_workflow(ten_steps, steps)
            result = handle.get_result()
            elapsed = (time.perf_counter() - began) * 1000
            assert result == expected, result
            return elapsed

        for _ in range(args.warmup):
            one_run()
        meter.begin()
        figures.latency_ms = [one_run() for _ in range(args.sequential)]
        figures.cpu_ms_per_run["latency"] = meter.end(args.sequential)

        # Direct call (the workflow runs in the caller's thread): printed as a note only.
        direct = []
        for _ in range(min(args.sequential, 50)):
            began = time.perf_counter()
            ten_steps(steps)
            direct.append((time.perf_counter() - began) * 1000)
        figures.notes.append(
            f"DBOS, the workflow called directly in the caller's thread (no start_workflow): "
            f"p50 {p50(direct):.2f} ms (n={len(direct)})"
        )

        with ThreadPoolExecutor(max_workers=args.in_flight) as callers:
            list(callers.map(lambda _: one_run(), range(min(args.in_flight, 50))))  # warm-up
            meter.begin()
            began = time.perf_counter()
            list(callers.map(lambda _: one_run(), range(args.runs)))
            figures.throughput_seconds = time.perf_counter() - began
            figures.cpu_ms_per_run["throughput"] = meter.end(args.runs)
        figures.throughput_runs = args.runs
        figures.throughput = args.runs / figures.throughput_seconds

        remaining = args.waits
        while remaining > 0:
            batch = min(args.park_batch, remaining)
            with parked_lock:
                parked.clear()
            handles: list[WorkflowHandle[float]] = [
                DBOS.start_workflow(waiter) for _ in range(batch)
            ]
            wait_until(lambda: len(parked) >= batch, timeout=60, what="DBOS runs in recv")
            time.sleep(args.settle)
            for handle in handles:
                began = time.perf_counter()
                DBOS.send(handle.get_workflow_id(), "go", topic="go")
                resumed_at = handle.get_result()
                figures.resume_ms.append((resumed_at - began) * 1000)
            remaining -= batch
    finally:
        DBOS.destroy(destroy_registry=True)
    return figures


@contextlib.contextmanager
def postgres(scratch: Path) -> Iterator[tuple[str, int]]:
    """A throwaway PostgreSQL cluster (dbos_setup.sh start/stop); yields its URL and the
    postmaster's pid."""
    directory = scratch / "postgres"
    try:
        url = subprocess.run(
            ["bash", str(SETUP), "start", str(directory)],
            check=True, stdout=subprocess.PIPE, text=True,
        ).stdout.strip().splitlines()[-1]
        postmaster = int((directory / "data" / "postmaster.pid").read_text().split()[0])
        yield url, postmaster
    finally:
        subprocess.run(["bash", str(SETUP), "stop", str(directory)], check=False)


def postgres_version(url: str) -> str:
    import psycopg  # type: ignore[import-not-found,unused-ignore]

    with psycopg.connect(url) as connection:
        row = connection.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "?"


# --------------------------------------------------------------------------- Steplog

# The Steplog side is written in steplog_side() (below the harness): the workflows, the worker
# entry point (`--worker`) and the three measurements through the client.


@dataclass
class ChildProcess:
    """A child process with its log, stopped with SIGTERM (then SIGKILL) at the end."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}: "
                f"{self.log_path.read_text(errors='replace')[-3000:]}"
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


def spawn(name: str, argv: list[str], env: dict[str, str], log_path: Path) -> ChildProcess:
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    return ChildProcess(name, process, log_path)


_SETTINGS_FIELDS = (
    "kafka_bootstrap", "clickhouse_dsn", "clickhouse_database", "topic_prefix", "data_dir",
    "events_partitions", "commands_partitions", "signals_partitions", "sql_port", "project",
)


def stack_environment(settings: Any) -> dict[str, str]:
    """The environment of a child process that reads these settings (as tests/conftest.py)."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")},
        **{f"STEPLOG_{name.upper()}": str(getattr(settings, name)) for name in _SETTINGS_FIELDS},
    }


# `steplog processors`, with a timer around each batch (the processors' code is not changed:
# its methods are wrapped in this child process before it starts). One JSON line per batch to
# $BENCH_PROCESSORS_TIMING: the agent, the batch size, when it began (wall clock), the newest
# message's Kafka timestamp, and how long the batch took in all, in the ClickHouse write and in
# carrying out its effects (sending commands and events and awaiting their acknowledgements).
PROCESSORS_WITH_TIMING = """
import contextvars, json, os, sys, time
import steplog.processors.dispatch as dispatch
import steplog.processors.fold_host as fold_host
import steplog.processors.projection_writes as projection_writes
import steplog.processors.signals_host as signals_host
out = open(os.environ["BENCH_PROCESSORS_TIMING"], "a", buffering=1)
current = contextvars.ContextVar("bench_batch", default=None)

def timed_batch(agent, method):
    async def wrapper(self, batch):
        record = {"agent": agent, "n": len(batch), "began": time.time(), "write_ms": 0.0,
                  "carry_out_ms": 0.0,
                  "newest_sent": max((getattr(i, "message", i).timestamp or 0)
                                     for i in batch) if batch else 0}
        token = current.set(record)
        began = time.perf_counter()
        try:
            return await method(self, batch)
        finally:
            record["total_ms"] = (time.perf_counter() - began) * 1000
            current.reset(token)
            out.write(json.dumps(record) + "\\n")
    return wrapper

def timed_part(field, method):
    async def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return await method(*args, **kwargs)
        finally:
            record = current.get()
            if record is not None:
                record[field] += (time.perf_counter() - began) * 1000
    return wrapper

for cls, name, agent in ((getattr(fold_host, "FoldHost", None), "process_events", "events"),
                         (getattr(signals_host, "SignalsHost", None), "process_signals",
                          "signals")):
    if cls is not None and hasattr(cls, name):
        setattr(cls, name, timed_batch(agent, getattr(cls, name)))
if hasattr(getattr(projection_writes, "ProjectionWrites", None), "_write"):
    projection_writes.ProjectionWrites._write = timed_part(
        "write_ms", projection_writes.ProjectionWrites._write
    )
if hasattr(getattr(dispatch, "Dispatcher", None), "carry_out"):
    dispatch.Dispatcher.carry_out = timed_part("carry_out_ms", dispatch.Dispatcher.carry_out)
from steplog.server.entry import main
sys.argv[1:] = ["processors"]
main()
"""


def start_processors(settings: Any, log_path: Path, timing_path: Path) -> ChildProcess:
    """`steplog processors` as a child (timed per batch, above); returns when its SQL
    endpoint answers."""
    from steplog.server.sql_http import sql_endpoint_answers

    child = spawn(
        "processors",
        [sys.executable, "-c", PROCESSORS_WITH_TIMING],
        {**stack_environment(settings), "BENCH_PROCESSORS_TIMING": str(timing_path)},
        log_path,
    )

    def answers() -> bool:
        child.check_alive()
        return sql_endpoint_answers(settings.sql_port, timeout=5)

    try:
        wait_until(answers, timeout=120, what="the processors' SQL endpoint")
    except BaseException:
        child.stop()
        raise
    return child


# --------------------------------------------------------------------------- helpers


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def load() -> str:
    """The load averages (they count runnable threads, this benchmark's too: DBOS runs a
    thread per workflow in flight; "others" in the CPU lines is the cleaner measure of noise)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def print_figures(figures: Figures, title: str, in_flight: int) -> None:
    print(f"{title}:")
    print(f"  10-step latency     {summary(figures.latency_ms)}")
    print(
        f"  throughput          {figures.throughput:7.1f} runs/s  ({figures.throughput_runs} "
        f"runs, {in_flight} in flight, in {figures.throughput_seconds:.2f} s)"
    )
    print(f"  event-to-resume     {summary(figures.resume_ms)}")
    for phase, used in figures.cpu_ms_per_run.items():
        shown = ", ".join(f"{name} {ms:.1f}" for name, ms in used.items())
        print(f"  CPU ms per run ({phase}): {shown}")
    for note in figures.notes:
        print(f"  {note}")


def report(dbos: list[Figures], ours: list[Figures], in_flight: int) -> None:
    """The medians over the rounds, side by side, with the ratios and the targets."""
    metrics: list[tuple[str, Callable[[Figures], float]]] = [
        ("10-step latency p50 (ms)", lambda f: p50(f.latency_ms)),
        ("10-step latency p99 (ms)", lambda f: p99(f.latency_ms)),
        (f"10-step runs/s, {in_flight} in flight", lambda f: f.throughput),
        ("event-to-resume p50 (ms)", lambda f: p50(f.resume_ms)),
        ("event-to-resume p99 (ms)", lambda f: p99(f.resume_ms)),
    ]
    targets: dict[int, tuple[str, Callable[[float, float], bool]]] = {
        0: ("Steplog <= DBOS", lambda ours_, dbos_: ours_ <= dbos_),
        2: (">= 4x DBOS", lambda ours_, dbos_: ours_ >= 4 * dbos_),
        3: ("Steplog <= DBOS", lambda ours_, dbos_: ours_ <= dbos_),
        4: ("Steplog <= 50 ms", lambda ours_, dbos_: ours_ <= 50),
    }
    rounds = max(len(dbos), len(ours))
    print()
    print(f"median of {rounds} round(s) | DBOS | Steplog | Steplog/DBOS | target")
    for index, (name, metric) in enumerate(metrics):
        d = statistics.median(metric(f) for f in dbos) if dbos else float("nan")
        o = statistics.median(metric(f) for f in ours) if ours else float("nan")
        target = ""
        if index in targets and dbos and ours:
            label, ok = targets[index]
            target = f"{label}: {'met' if ok(o, d) else 'MISSED'}"
        print(f"  {name:<32} {d:9.2f} {o:9.2f} {o / d:8.2f}x   {target}")
    keys = ("latency_p50_ms", "latency_p99_ms", "runs_per_s", "resume_p50_ms", "resume_p99_ms")
    line = []
    for system, figures in (("dbos", dbos), ("steplog", ours)):
        for key, (_, metric) in zip(keys, metrics):
            if figures:
                line.append(f"{system}_{key}={statistics.median(metric(f) for f in figures):.2f}")
    print("result: rounds=" + str(rounds) + " " + " ".join(line))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds (each: DBOS phase, then Steplog phase); medians reported")
    parser.add_argument("--steps", type=int, default=10, help="steps per workflow")
    parser.add_argument("--warmup", type=int, default=300, help="runs before the latency runs")
    parser.add_argument("--sequential", type=int, default=200, help="latency runs")
    parser.add_argument("--runs", type=int, default=2000, help="runs of the throughput test")
    parser.add_argument("--in-flight", type=int, default=200, help="concurrent runs")
    parser.add_argument("--waits", type=int, default=200, help="event-to-resume samples")
    parser.add_argument("--park-batch", type=int, default=20, help="runs parked at once")
    parser.add_argument("--settle", type=float, default=0.2,
                        help="seconds between a batch being parked and the first send")
    parser.add_argument("--dbos-pool-size", type=int, default=20, help=(
        "DBOS's system database pool (sys_db_pool_size; 20 is DBOS's default; 40, 100 and "
        "210 gave it no more throughput here)"))
    parser.add_argument("--only", choices=("dbos", "steplog"), help="measure one system")
    parser.add_argument("--skip-install", action="store_true",
                        help="do not run dbos_setup.sh install first")
    parser.add_argument("--profile-runs", type=int, default=50,
                        help="Steplog: runs and waits measured hop by hop after the figures")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker()
        return
    print("command:", shlex.join([sys.executable, *sys.argv]))
    if not args.skip_install and args.only != "steplog":
        subprocess.run(["bash", str(SETUP), "install"], check=True)
    from steplog.settings import load_settings

    base = load_settings()
    machine = (
        f"machine: nproc={os.cpu_count()} python={platform.python_version()} "
        f"kafka={base.kafka_version} heap={base.broker_heap} dbos={version_of('dbos')} "
        f"faust={version_of('faust-streaming')} aiokafka={version_of('aiokafka')}"
    )
    dbos: list[Figures] = []
    ours: list[Figures] = []
    # Rounds alternate the systems, so that a noisy stretch of the machine hits both; each
    # system has the machine to itself during its phase (the other's servers are stopped).
    with tempfile.TemporaryDirectory(prefix="steplog-vs-dbos-") as scratch_name:
        for round_ in range(1, args.rounds + 1):
            scratch = Path(scratch_name) / f"round-{round_}"
            scratch.mkdir()
            if args.only != "steplog":
                print(f"round {round_}, DBOS phase begins: {load()}", flush=True)
                with postgres(scratch) as (url, postmaster):
                    if round_ == 1:
                        machine += f" postgresql={postgres_version(url)}"
                    dbos.append(measure_dbos(
                        args, url.rsplit("/", 1)[0] + "/steplog_bench_dbos", postmaster
                    ))
                print(f"round {round_}, DBOS phase ends: {load()}", flush=True)
                print_figures(dbos[-1], f"DBOS, round {round_}", args.in_flight)
            if args.only != "dbos":
                print(f"round {round_}, Steplog phase begins: {load()}", flush=True)
                ours.append(steplog_side(args, scratch))
                print(f"round {round_}, Steplog phase ends: {load()}", flush=True)
                print_figures(ours[-1], f"Steplog, round {round_}", args.in_flight)
    print()
    print(machine)
    print(TARGETS)
    report(dbos, ours, args.in_flight)


# --------------------------------------------------------------------------- Steplog side


@dataclass
class Seen:
    """One message the tail read: which, about what, when its producer stamped it, when seen."""

    topic: str
    type: str
    run_id: str | None
    step_key: str | None
    ts: float
    """The message's own `ts`, epoch seconds: its producer's wall clock when it observed the
    fact (a command the processors derive from an event carries that event's ts)."""
    sent: float
    """The Kafka record's timestamp (CreateTime: its producer's clock at send), epoch s, ms
    resolution: when the message was actually sent, which is what the hops are measured by."""
    seen_at: float
    """time.time() when the tail decoded it."""


class Tail:
    """Reads the events topic (and, profiling, commands and signals) from its end as it grows.

    It resolves what the client has no call for: a run's `step.waiting` (the run is parked: its
    `wait.registered` was acknowledged before); results come from the runs' handles. No
    consumer group: reading never disturbs the processors or the worker.
    """

    def __init__(self, bootstrap: str, topics: Any, *, profile: bool) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.profile = profile
        self.seen: list[Seen] = []
        self._waiting: dict[tuple[str, str], asyncio.Future[tuple[float, Any]]] = {}
        self._early: dict[tuple[str, str], tuple[float, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._consumer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from steplog.topics import topic_partitions

        # Commands and signals are read only while profiling (the flag may change later).
        names = [self.topics.events, self.topics.commands, self.topics.signals]
        assigned = [
            TopicPartition(name, p)
            for name in names
            for p in await topic_partitions(self.bootstrap, name)
        ]
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
        )
        await self._consumer.start()
        self._consumer.assign(assigned)
        await self._consumer.seek_to_end(*assigned)
        for tp in assigned:  # resolve the positions now: nothing written from here is missed
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    def expect(self, run_id: str, what: str) -> asyncio.Future[tuple[float, Any]]:
        """A future of (time.perf_counter() when seen, None) for "step.waiting" of the run."""
        future: asyncio.Future[tuple[float, Any]] = asyncio.get_running_loop().create_future()
        early = self._early.pop((run_id, what), None)
        if early is not None:
            future.set_result(early)
        else:
            self._waiting[(run_id, what)] = future
        return future

    async def _run(self) -> None:
        from steplog.schemas.codec import decode_command, decode_event, decode_signals_message

        while True:
            batches = await self._consumer.getmany(timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    value: bytes = record.value
                    if tp.topic == self.topics.events:
                        if not (b'"step.waiting"' in value or self.profile):
                            continue
                        event: Any = decode_event(value)
                        now = time.perf_counter()
                        if self.profile:
                            self._record("events", record, event, getattr(event, "step_key", None))
                        if event.type == "step.waiting":
                            self._resolve(event.run_id, "step.waiting", (now, None))
                    elif not self.profile:
                        continue
                    elif tp.topic == self.topics.commands:
                        command: Any = decode_command(value)
                        self._record("commands", record, command, None)
                    else:
                        message: Any = decode_signals_message(value)
                        self._record("signals", record, message, getattr(message, "step_key", None))

    def _record(self, topic: str, record: Any, message: Any, step_key: str | None) -> None:
        self.seen.append(Seen(
            topic, message.type, getattr(message, "run_id", None), step_key,
            message.ts.timestamp(), record.timestamp / 1000, time.time(),
        ))

    def _resolve(self, run_id: str, what: str, value: tuple[float, Any]) -> None:
        future = self._waiting.pop((run_id, what), None)
        if future is None:
            self._early[(run_id, what)] = value
        elif not future.done():
            future.set_result(value)


@contextlib.contextmanager
def steplog_stack(
    scratch: Path, *, worker: list[str] | None = None
) -> Iterator[tuple[Any, dict[str, int]]]:
    """Broker, topics, processors and one worker, all started here and stopped at the end;
    yields the settings and the pids of the processes. The children's logs are in the scratch dir (tails printed on error).
    `worker`: the worker's command (default: this script's `--worker`; benchmarks/flow_control.py
    brings its own)."""
    from steplog.server.broker import LocalBroker
    from steplog.settings import load_settings
    from steplog.topics import ensure_topics, topic_specs

    base = load_settings()
    broker = LocalBroker(
        scratch / "kafka", free_port(), heap=base.broker_heap, version=base.kafka_version,
        cache_dir=base.cache_dir,
    )
    began = time.perf_counter()
    broker.start()
    children: list[ChildProcess] = []
    try:
        settings = load_settings(
            kafka_bootstrap=broker.bootstrap,
            topic_prefix="bench.",
            project="bench",
            data_dir=scratch / "steplog",
            clickhouse_dsn=f"chdb://{scratch / 'clickhouse'}",
            sql_port=free_port(),
        )
        asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
        children.append(start_processors(
            settings, scratch / "processors.log", scratch / "processors-batches.jsonl"
        ))
        children.append(spawn(
            "worker", worker or [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stack_environment(settings), scratch / "worker.log",
        ))
        print(
            f"Steplog: Kafka on {broker.bootstrap}, processors (SQL on :{settings.sql_port}) "
            f"and a worker up in {time.perf_counter() - began:.1f} s", flush=True,
        )
        pids = {
            "broker (JVM)": broker.status().pid or 0,
            "processors": children[0].process.pid,
            "worker": children[1].process.pid,
            "client (this process)": os.getpid(),
        }
        try:
            yield settings, pids
        except BaseException:
            for child in children:
                print(f"--- {child.name} log (tail) ---", file=sys.stderr)
                print(child.log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
    finally:
        for child in reversed(children):
            child.stop()
        broker.stop()


def steplog_side(args: argparse.Namespace, scratch: Path) -> Figures:
    with steplog_stack(scratch) as (settings, pids):
        # The processors' live children: the store process, which owns the embedded engine.
        meter = CpuMeter({name: (pid, name == "processors") for name, pid in pids.items()})
        return asyncio.run(
            measure_steplog(args, settings, meter, scratch / "processors-batches.jsonl")
        )


APP = "bench"
TEN_STEPS = "bench.ten-steps"
WAITER = "bench.waiter"
GO = "bench.go"


def trivial(i: int) -> int:
    """The step: a trivial function returning a small value (a plain def, as on the DBOS side)."""
    return i + 1


def build_app(settings: Any = None) -> Any:
    """The benchmark's workflows; the worker (`--worker`) serves them."""
    import steplog

    app = steplog.App(APP, settings=settings)

    @app.workflow(TEN_STEPS)
    async def ten_steps(ctx: steplog.WorkflowContext) -> int:
        data: Any = ctx.event.data
        total = 0
        for i in range(int(data["steps"])):
            total += await ctx.step.run(f"step-{i}", trivial, input=i)
        return total

    @app.workflow(WAITER)
    async def waiter(ctx: steplog.WorkflowContext) -> dict[str, float]:
        await ctx.step.wait_for_event("go", event=GO, match="data.key")
        # The workflow code runs again: the moment measured (perf_counter is CLOCK_MONOTONIC,
        # comparable across the processes of one machine).
        return {"resumed_perf": time.perf_counter(), "resumed_wall": time.time()}

    return app


def run_worker() -> None:
    """The worker child process: STEPLOG_* settings from the environment."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    build_app().worker().run()


async def measure_steplog(
    args: argparse.Namespace, settings: Any, meter: CpuMeter, batches_path: Path
) -> Figures:
    """The three measurements through the client in this process; each result is awaited with
    the run's handle (`RunHandle.result_async`)."""
    import uuid

    import steplog

    figures = Figures("Steplog")
    steps = args.steps
    expected = sum(i + 1 for i in range(steps))
    # Parked runs and the profile's hops are read from the topics; started for those phases
    # only, so it does not compete with the client during the latency and throughput runs.
    tail = Tail(settings.kafka_bootstrap, settings.topics, profile=False)
    client = steplog.Client(settings=settings)
    try:

        async def one_run(timeout: float = 60) -> float:
            began = time.perf_counter()
            run = await client.start_async(TEN_STEPS, {"steps": steps}, app=APP)
            output = await run.result_async(timeout=timeout)
            seen = time.perf_counter()
            assert output == expected, output
            return (seen - began) * 1000

        first = await one_run(timeout=120)  # the worker joins its group meanwhile
        figures.notes.append(f"Steplog first run (worker joining its group): {first:.0f} ms")
        for _ in range(args.warmup):
            await one_run()
        meter.begin()
        figures.latency_ms = [await one_run() for _ in range(args.sequential)]
        figures.cpu_ms_per_run["latency"] = meter.end(args.sequential)

        room = asyncio.Semaphore(args.in_flight)

        async def limited() -> float:
            async with room:
                return await one_run(timeout=300)

        await asyncio.gather(*(limited() for _ in range(min(args.in_flight, 50))))  # warm-up
        meter.begin()
        began = time.perf_counter()
        await asyncio.gather(*(limited() for _ in range(args.runs)))
        figures.throughput_seconds = time.perf_counter() - began
        figures.cpu_ms_per_run["throughput"] = meter.end(args.runs)
        figures.throughput_runs = args.runs
        figures.throughput = args.runs / figures.throughput_seconds

        await tail.start()
        figures.resume_ms = [r.latency_ms for r in await resume_rounds(args, client, tail, args.waits)]

        # Where the time goes: a few more runs of each kind with every message of the
        # events, commands and signals topics decoded (kept out of the figures above).
        tail.profile = True
        profile_began = time.time()
        profiled: list[tuple[str, float, float]] = []
        for _ in range(args.profile_runs):
            run_id = uuid.uuid4().hex
            wall, began = time.time(), time.perf_counter()
            run = await client.start_async(TEN_STEPS, {"steps": steps}, app=APP, run_id=run_id)
            await run.result_async(timeout=60)
            profiled.append((run_id, wall, wall + (time.perf_counter() - began)))
        waits = await resume_rounds(args, client, tail, min(args.profile_runs, args.waits))
        figures.notes.extend(hop_breakdown(tail.seen, profiled, waits))
        figures.notes.extend(batch_breakdown(batches_path, profile_began, time.time()))
    finally:
        client.close()
        await tail.stop()
    return figures


@dataclass
class Resumed:
    run_id: str
    sent_wall: float
    latency_ms: float
    resumed_wall: float


async def resume_rounds(
    args: argparse.Namespace, client: Any, tail: Tail, count: int
) -> list[Resumed]:
    """Park runs in batches; per batch, once parked, send each run's event and wait for it to
    resume before the next send."""
    import uuid

    results: list[Resumed] = []
    while len(results) < count:
        batch = min(args.park_batch, count - len(results))
        keys = [uuid.uuid4().hex for _ in range(batch)]
        parked = [tail.expect(key, "step.waiting") for key in keys]
        runs = await asyncio.gather(*(
            client.start_async(WAITER, {"key": key}, app=APP, run_id=key) for key in keys
        ))
        await asyncio.wait_for(asyncio.gather(*parked), 60)
        await asyncio.sleep(args.settle)
        for key, run in zip(keys, runs):
            sent_wall, began = time.time(), time.perf_counter()
            await client.send_event_async(GO, {"key": key})
            output: Any = await run.result_async(timeout=60)
            results.append(Resumed(
                key, sent_wall, (output["resumed_perf"] - began) * 1000, output["resumed_wall"]
            ))
    return results


def hop_breakdown(
    seen: list[Seen], runs: list[tuple[str, float, float]], waits: list[Resumed]
) -> list[str]:
    """Median time per hop. Between processes: the Kafka records' timestamps (each producer's
    clock at send; one machine, one clock; ms resolution). Inside the worker: the events' own
    `ts` (µs)."""
    by_run: dict[str, list[Seen]] = {}
    for message in seen:
        if message.run_id is not None:
            by_run.setdefault(message.run_id, []).append(message)

    def find(run_id: str, topic: str, type_: str, step_key: str | None = None,
             after: float = 0.0) -> Seen | None:
        for message in by_run.get(run_id, []):
            if message.topic == topic and message.type == type_ and message.sent >= after and (
                step_key is None or message.step_key == step_key
            ):
                return message
        return None

    def median_ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:7.2f} ms" if values else "    n/a   "

    hops: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        hops.setdefault(name, []).append(value)

    for run_id, called, result_seen in runs:
        start = find(run_id, "commands", "command.start_run")
        started = find(run_id, "events", "run.started")
        resume = find(run_id, "commands", "command.resume_run")
        step0 = find(run_id, "events", "step.started", "step-0")
        completed = find(run_id, "events", "run.completed")
        if not (start and started and resume and step0 and completed):
            continue
        add("client.start_async called -> start_run sent (client's producer)", start.sent - called)
        add("start_run on commands -> worker sends run.started", started.sent - start.sent)
        add("run.started on events -> processors (batch, fold) send resume_run",
            resume.sent - started.sent)
        add("resume_run on commands -> worker (reads the run's log) sends step-0 started",
            step0.sent - resume.sent)
        runs_steps = [m for m in by_run[run_id] if m.topic == "events" and m.step_key]
        started_ts = {m.step_key: m.ts for m in runs_steps if m.type == "step.started"}
        completed_ts = {m.step_key: m.ts for m in runs_steps if m.type == "step.completed"}
        calls, gaps = [], []
        for key, began in started_ts.items():
            if key in completed_ts:
                calls.append(completed_ts[key] - began)
        keys = sorted(started_ts, key=lambda k: started_ts[k])
        for before, after in zip(keys, keys[1:]):
            if before in completed_ts:
                gaps.append(started_ts[after] - completed_ts[before])
        if calls and gaps:
            add("  of which step.started -> step.completed, summed (the calls, in a thread)",
                sum(calls))
            add("  of which step.completed -> next step.started, summed (awaiting the acks)",
                sum(gaps))
        add("step-0 started -> run.completed sent (all steps, checkpoints acknowledged)",
            completed.sent - step0.sent)
        add("run.completed sent -> result returned to the caller (RunHandle.result_async)",
            result_seen - completed.sent)
        add("total: start -> result", result_seen - called)
    lines = [f"Steplog 10-step run, where the time goes (median of {len(runs)} runs):"]
    lines += [f"  {median_ms(values)}  {name}" for name, values in hops.items()]

    hops = {}
    for wait in waits:
        signal_sent = find(wait.run_id, "signals", "signal")  # signals carry no run id
        resolved = find(wait.run_id, "events", "step.completed", "go")
        resume = find(wait.run_id, "commands", "command.resume_run",
                      after=resolved.sent if resolved else 0.0)
        if resolved is None or resume is None:
            continue
        del signal_sent
        add("client.send_event_async called -> signals agent sends step.completed of the wait",
            resolved.sent - wait.sent_wall)
        add("step.completed on events -> processors (batch, fold) send resume_run",
            resume.sent - resolved.sent)
        add("resume_run on commands -> worker (reads the run's log) runs the workflow code",
            wait.resumed_wall - resume.sent)
        add("total: send -> workflow code runs again", wait.resumed_wall - wait.sent_wall)
    lines.append(f"Steplog event-to-resume, where the time goes (median of {len(waits)} waits):")
    lines += [f"  {median_ms(values)}  {name}" for name, values in hops.items()]
    return lines


def batch_breakdown(path: Path, began: float, ended: float) -> list[str]:
    """The processors' batches during the profiled runs: medians per agent."""
    import json

    batches: dict[str, list[dict[str, float]]] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if began <= record["began"] <= ended:
                    batches.setdefault(record["agent"], []).append(record)
    lines = ["Steplog processors' batches during those runs (median per batch):"]
    for agent, records in sorted(batches.items()):

        def median(values: list[float]) -> float:
            return statistics.median(values) if values else float("nan")

        def seconds(stamp: float) -> float:  # faust gives seconds; be safe about ms
            return stamp / 1000 if stamp > 1e11 else stamp

        waited = [(r["began"] - seconds(r["newest_sent"])) * 1000
                  for r in records if r["newest_sent"]]
        total = [r["total_ms"] for r in records]
        write = [r["write_ms"] for r in records]
        carry = [r["carry_out_ms"] for r in records]
        rest = [t - w - c for t, w, c in zip(total, write, carry)]
        lines.append(
            f"  {agent:<8} {len(records)} batches of {median([r['n'] for r in records]):.0f} "
            f"messages: newest message sent -> batch begins {median(waited):.2f} ms; batch "
            f"{median(total):.2f} ms = decode+fold+state {median(rest):.2f} ms + ClickHouse "
            f"write {median(write):.2f} ms + sending effects, acknowledged {median(carry):.2f} ms"
        )
    return lines


if __name__ == "__main__":
    main()
