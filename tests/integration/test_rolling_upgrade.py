"""A rolling upgrade while runs are in flight (schemas/COMPATIBILITY.md, README "Upgrades").

Two processors processes and two workers run workflows that sleep between steps. While every
run is parked in its first sleep, one processors process and one worker are stopped (SIGTERM)
and started again "upgraded"; more runs follow once the upgraded pair holds partitions, so the
old and the new versions read what the other wrote in both directions.

The upgraded build is simulated, not forked: the new processes start with a `sitecustomize`
on their PYTHONPATH that wraps `codec.encode` so that everything they write (events, commands,
signals, dead letters) is the next minor version's document, `golden.next_minor_document`, the
same function that writes `schemas/examples/next`. The production code carries no hook for it,
and the test sees the new version in the log: records with the next minor's field.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from steplog.credentials import local_admin_key
from steplog.producers.client import Client
from steplog.producers.record_batches import key_partition
from steplog.projections.log_reader import read_log
from steplog.schemas.codec import decode_command, decode_event
from steplog.schemas.golden import NEXT_FIELD
from steplog.server.health import read_group_members
from steplog.settings import Settings, child_environment
from tests.conftest import RunningProcessors, free_port, start_processors, wait_for

APP = "roll"
STEPS = ["one", "two", "three"]

ROLL_APP = '''
import os
import steplog

app = steplog.App("roll")
EXECUTIONS = os.environ["TEST_EXECUTIONS"]


def execute(run_id, name):
    def step():
        # One line per execution, by whichever worker process ran it (appends of a short
        # line are atomic, so two workers can share the file).
        with open(EXECUTIONS, "a") as out:
            out.write(f"{run_id} {name} {os.getpid()}\\n")
        return name
    return step


@app.workflow("roll")
async def roll(ctx):
    done = [await ctx.step.run("one", execute(ctx.run_id, "one"))]
    await ctx.step.sleep("nap", "1s")
    done.append(await ctx.step.run("two", execute(ctx.run_id, "two")))
    await ctx.step.sleep("doze", "1s")
    done.append(await ctx.step.run("three", execute(ctx.run_id, "three")))
    return done
'''

NEXT_VERSION = '''
"""The next minor version of Steplog, simulated: what this process writes is the next minor's
document (tests/integration/test_rolling_upgrade.py)."""
import json

from steplog.schemas import codec, golden

_encode = codec.encode


def encode(message, *, max_bytes=codec.DEFAULT_MAX_BYTES):
    _encode(message, max_bytes=max_bytes)  # today's checks, then the newer document
    return json.dumps(golden.next_minor_document(message), separators=(",", ":")).encode()


codec.encode = encode
'''


class Rollout:
    """The processes of the test, each stopped by it: the first processors (the engine and SQL
    endpoint), the second (writing through that endpoint), and the workers."""

    def __init__(self, settings: Settings, scratch: Path) -> None:
        self.settings = settings
        self.scratch = scratch
        self.directory = scratch / "roll"
        self.directory.mkdir()
        (self.directory / "roll_app.py").write_text(ROLL_APP)
        self.next_version = scratch / "next"
        self.next_version.mkdir()
        (self.next_version / "sitecustomize.py").write_text(NEXT_VERSION)
        self.executions = self.directory / "executions.txt"
        self.first: RunningProcessors | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.health_ports: dict[str, int] = {}

    def __enter__(self) -> Rollout:
        self.first = start_processors(self.settings, self.scratch / "first.log")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(*self.processes, check=False)
        if self.first is not None:
            self.first.stop()

    def start(self, name: str, *args: str, upgraded: bool = False) -> None:
        settings = self.settings
        if args == ("processors",):
            settings = settings.model_copy(update={
                "clickhouse_dsn": f"http://default:{local_admin_key(settings)}@127.0.0.1:"
                f"{settings.sql_port}",
                # The same data dir across the restart: the same static group member
                # (processors/membership.py), as a deployment's process keeps its volume.
                "data_dir": self.scratch / name,
                "sql_port": free_port(),
                # The same port across the restart, as a deployment's process keeps it: a
                # static member that comes back keeps its place in the group, and the group
                # keeps naming the client id (and so the port) it joined with first.
                "health_port": self.health_ports.get(name) or free_port(),
            })
            self.health_ports[name] = settings.health_port
        env = {**child_environment(settings), "TEST_EXECUTIONS": str(self.executions)}
        if upgraded:
            env["PYTHONPATH"] = str(self.next_version)
        # Appended: the log of a name holds the old version's lines, then the upgraded one's.
        with open(self.scratch / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-c", "from steplog.server.entry import main; main()", *args],
                cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT,
            )

    def stop(self, *names: str, check: bool = True) -> None:
        """SIGTERM to each of `names` at once, then wait for each (a clean exit if `check`)."""
        stopping = {name: self.processes.pop(name) for name in names}
        for process in stopping.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in stopping.items():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
            if check:
                assert process.returncode == 0, f"{name}: {self.log(name)}"

    def log(self, name: str) -> str:
        return (self.scratch / f"{name}.log").read_text(errors="replace")[-3000:]

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def executed(self) -> list[tuple[str, str, int]]:
        if not self.executions.exists():
            return []
        lines = self.executions.read_text().split("\n")
        return [(run, step, int(pid)) for run, step, pid in (line.split() for line in lines if line)]

    def both_workers_hold_partitions(self) -> bool:
        for name in ("worker-a", "worker-b"):
            if self.processes[name].poll() is not None:
                raise AssertionError(f"{name} exited: {self.log(name)}")
        members = asyncio.run(read_group_members(
            self.settings.kafka_bootstrap, f"{self.settings.topic_prefix}worker.{APP}",
            self.settings.topics.commands))
        return members.state == "Stable" and len(members.partitions) == 2 and all(
            members.partitions)

    def both_processors_hold_partitions(self) -> bool:
        """Whether the group is stable with two members holding partitions, the second being
        the process started last under that name."""
        second = self.processes["second"]
        if second.poll() is not None:
            raise AssertionError(f"the second processors exited: {self.log('second')}")
        members = asyncio.run(read_group_members(
            self.settings.kafka_bootstrap, self.settings.processors_group,
            self.settings.topics.events))
        endpoint = f"127.0.0.1:{self.health_ports['second']}"
        # The process that stopped has exited (stop() waits), so whatever answers on the
        # second's port is the one started last.
        return (members.state == "Stable" and len(members.partitions) == 2
                and all(members.partitions) and endpoint in members.health_endpoints
                and _answers(f"http://{endpoint}/health"))


def _answers(url: str) -> bool:
    """Whether `url` answers at all (a health endpoint: up, whatever it says)."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError:
        return True  # 503: unhealthy, but the process answers
    except OSError:
        return False


@pytest.fixture
def rollout(stack_settings: Settings, tmp_path: Path) -> Iterator[Rollout]:
    with Rollout(stack_settings, tmp_path) as running:
        yield running


def spread_runs(settings: Settings, prefix: str) -> list[str]:
    """Run ids that cover every events partition (so both processors fold some) and every
    commands partition (so both workers execute some)."""
    events = list(range(settings.events_partitions))
    commands = list(range(settings.commands_partitions))
    covered: set[tuple[str, int]] = set()
    chosen: list[str] = []
    for index in range(1000):
        run = f"{prefix}-{index}"
        places = {("events", key_partition(run.encode(), events)),
                  ("commands", key_partition(run.encode(), commands))}
        if not places <= covered:
            covered |= places
            chosen.append(run)
    assert len(covered) == len(events) + len(commands)
    return chosen


def records(settings: Settings, topic: str) -> list[bytes]:
    async def read() -> list[bytes]:
        return [record.value async for record in read_log(settings.kafka_bootstrap, topic)
                if record.value is not None]

    return asyncio.run(read())


def test_one_processors_process_and_one_worker_upgraded_mid_run(
    rollout: Rollout, stack_settings: Settings
) -> None:
    settings = stack_settings
    rollout.start("second", "processors")
    rollout.start("worker-a", "worker", "roll_app:app")
    rollout.start("worker-b", "worker", "roll_app:app")
    old_worker = rollout.pid("worker-b")
    wait_for(rollout.both_processors_hold_partitions, timeout=120, what="two processors members")
    wait_for(rollout.both_workers_hold_partitions, timeout=60, what="two workers")

    with Client(settings=settings) as client:
        before = spread_runs(settings, "before")
        handles = [client.start("roll", None, app=APP, run_id=run) for run in before]
        # Every run parked in its first sleep: its timer is in the processors' state and its
        # next resume is a command not yet written.
        wait_for(lambda: {run for run, step, _ in rollout.executed() if step == "one"}
                 == set(before), timeout=60, what="every run to finish step one")

        rollout.stop("worker-b", "second")
        rollout.start("second", "processors", upgraded=True)
        rollout.start("worker-b", "worker", "roll_app:app", upgraded=True)
        new_worker = rollout.pid("worker-b")
        for handle in handles:
            assert handle.result(timeout=60) == STEPS

        # Runs folded, resumed and executed by the upgraded pair, beside the old one.
        wait_for(rollout.both_processors_hold_partitions, timeout=120, what="the upgraded member")
        wait_for(rollout.both_workers_hold_partitions, timeout=60, what="the upgraded worker")
        after = spread_runs(settings, "after")
        handles = [client.start("roll", None, app=APP, run_id=run) for run in after]
        for handle in handles:
            assert handle.result(timeout=60) == STEPS

    executions = rollout.executed()
    assert Counter((run, step) for run, step, _ in executions) == {
        (run, step): 1 for run in [*before, *after] for step in STEPS
    }, "a step was repeated or lost"
    assert {old_worker, new_worker} <= {pid for _, _, pid in executions}

    # Each version read what the other wrote: the upgraded processes' records carry the next
    # minor's field, and every record of either version reads with this build's codec.
    events = records(settings, settings.topics.events)
    commands = records(settings, settings.topics.commands)
    for topic, values in (("events", events), ("commands", commands)):
        assert any(NEXT_FIELD.encode() in value for value in values), f"no newer {topic}"
    assert all(decode_event(value) for value in events)
    assert all(decode_command(value) for value in commands)
    assert records(settings, settings.topics.dlq) == []
    for name in ("first", "second", "worker-a", "worker-b"):
        assert "ERROR" not in rollout.log(name), rollout.log(name)
