"""A broker lost under load costs nothing (issue 23): on a 3-node cluster, SIGKILL the node that
leads the most events partitions (the active controller, when it is among them) while the SDK
sends events and a worker runs 10-step workflows with a sleep and a wait; then every event is
in ClickHouse exactly once, no step ran twice, and every run completes. Once with the node
restarted, once with it left dead.

One cluster and one stack (processors, a worker, a client) for the module; topics take the
cluster's defaults (3 replicas, min.insync.replicas 2), nothing is configured for replication.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from steplog.producers.app import App
from steplog.producers.client import Client
from steplog.producers.context import WorkflowContext
from steplog.server.broker import LocalCluster
from steplog.settings import Settings
from steplog.topics import ensure_topics, topic_specs
from tests.cluster_fixtures import cluster_settings, restarted_after
from tests.conftest import RunningProcessors, announce, start_processors, wait_for, with_own_engine
from tests.workflow_harness import WorkerThread

APP = "failover"
STEPS = 8  # step.run calls, besides the sleep and the wait: 10 steps a run
RUNS = 6
LOAD_PER_S = 200


def build_app(settings: Settings, calls: Counter[str], lock: threading.Lock) -> App:
    app = App(APP, project=settings.project, settings=settings)

    @app.workflow("ten-steps")
    async def ten_steps(ctx: WorkflowContext) -> Any:
        def step(key: str) -> str:
            with lock:
                calls[f"{ctx.run_id}:{key}"] += 1
            return key

        done = [await ctx.step.run(f"s{i}", step, input=f"s{i}") for i in range(STEPS // 2)]
        await ctx.step.sleep("nap", "300ms")
        # Nobody sends it: the wait times out, through the processors' timers.
        await ctx.step.wait_for_event("hear", event="never.sent", timeout="1s")
        done += [await ctx.step.run(f"s{i}", step, input=f"s{i}")
                 for i in range(STEPS // 2, STEPS)]
        return done

    return app


@dataclass
class Stack:
    cluster: LocalCluster
    settings: Settings
    processors: RunningProcessors
    client: Client
    calls: Counter[str] = field(default_factory=Counter)


@pytest.fixture(scope="module")
def stack(
    kafka_cluster: LocalCluster, clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("failover")
    settings = with_own_engine(
        cluster_settings(kafka_cluster, clickhouse_dsn, directory / "steplog"), directory
    )
    asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
    calls: Counter[str] = Counter()
    processors = start_processors(settings, directory / "processors.log")
    try:
        with (
            WorkerThread(build_app(settings, calls, threading.Lock()), settings),
            Client(settings=settings) as client,
        ):
            yield Stack(kafka_cluster, settings, processors, client, calls)
    finally:
        processors.stop()


class Load(threading.Thread):
    """The SDK under load: step events of runs `<prefix>-<n>`, LOAD_PER_S a second."""

    def __init__(self, client: Client, prefix: str) -> None:
        super().__init__(daemon=True)
        self.client, self.prefix, self.sent = client, prefix, 0
        self.stopping = threading.Event()

    def run(self) -> None:
        began = time.monotonic()
        while not self.stopping.is_set():
            self.client.record_step(flow_key="load", run_id=f"{self.prefix}-{self.sent // 10}",
                                    step_key=f"s{self.sent % 10}", status="completed")
            self.sent += 1
            # Paced on the clock, not slept per event: a slow send is caught up.
            ahead = began + self.sent / LOAD_PER_S - time.monotonic()
            if ahead > 0:
                self.stopping.wait(ahead)

    def finish(self) -> int:
        self.stopping.set()
        self.join(30)
        return self.sent


def victim(cluster: LocalCluster, topic: str, config: pytest.Config) -> int:
    """The node leading the most partitions of `topic`, the active controller if it is one of
    them."""
    counts = Counter(cluster.partition_leaders(topic).values())
    most = max(counts.values())
    leaders = sorted(node for node, count in counts.items() if count == most and node >= 0)
    controller = cluster.active_controller()
    chosen = controller if controller in leaders else leaders[0]
    announce(config, f"\nkilling node {chosen}: leads {most} of {topic}'s partitions "
                     f"(leaders {dict(counts)}); active controller: {controller}")
    return chosen


def survive_a_kill(stack: Stack, config: pytest.Config, *, restart: bool) -> None:
    cluster, processors, client = stack.cluster, stack.processors, stack.client
    prefix = f"load-{'restart' if restart else 'dead'}"
    load = Load(client, prefix)
    load.start()
    runs = [client.start("ten-steps", app=APP) for _ in range(RUNS // 2)]
    wait_for(lambda: any(processors.run_status(run) == "running" for run in runs),
             timeout=60, what="a run to be running")
    node = victim(cluster, stack.settings.topics.events, config)
    killed_at = time.monotonic()
    cluster.kill(node)
    runs += [client.start("ten-steps", app=APP) for _ in range(RUNS - RUNS // 2)]
    if restart:
        # Back once Kafka has fenced it and moved its leadership: a crash and a recovery.
        wait_for(lambda: node not in cluster.partition_leaders(stack.settings.topics.events)
                 .values(), timeout=30, what=f"node {node} to lead nothing")
        cluster.restart(node)
    sent = load.finish()
    assert client.flush(120), f"undelivered after 120 s: {client.stats()}"
    stats = client.stats()
    assert (stats.dropped, stats.failed) == (0, 0), stats

    wait_for(lambda: all(processors.run_status(run) == "completed" for run in runs),
             timeout=120, what=f"runs {runs} to complete")
    ran = {key: count for key, count in stack.calls.items() if key.split(":")[0] in runs}
    assert len(ran) == len(runs) * STEPS
    assert set(ran.values()) == {1}, {key: n for key, n in ran.items() if n != 1}

    def landed() -> tuple[int, int]:
        (row,) = processors.rows(
            "SELECT count() AS n, uniqExact(event_id) AS ids FROM events "
            "WHERE startsWith(run_id, {p:String})", p=f"{prefix}-")
        return int(row["n"]), int(row["ids"])

    wait_for(lambda: landed()[1] >= sent, timeout=120, what=f"{sent} events in ClickHouse")
    assert landed() == (sent, sent)
    announce(config, f"node {node} {'restarted' if restart else 'left dead'}: {sent} events, "
                     f"{len(runs)} runs, {time.monotonic() - killed_at:.1f}s from the kill")


def test_a_killed_and_restarted_leader_loses_and_repeats_nothing(
    stack: Stack, pytestconfig: pytest.Config
) -> None:
    with restarted_after(stack.cluster):
        survive_a_kill(stack, pytestconfig, restart=True)


def test_a_leader_killed_for_good_loses_and_repeats_nothing(
    stack: Stack, pytestconfig: pytest.Config
) -> None:
    # Dead for the whole test; restarted after it for the session's next users of the cluster.
    with restarted_after(stack.cluster):
        survive_a_kill(stack, pytestconfig, restart=False)
