"""`steplog status` on real Kafka: the cluster's lines on the single test broker (ok, no
warning), which bootstrap hosts answer and which do not (by name, with why), and on a 3-node
cluster: FAIL naming a killed broker within 10 s, and until its partitions are back in sync."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from steplog.kafka import access
from steplog.server.broker.cluster import LocalCluster
from steplog.server.cluster_health import Finding, Level, classify, read_cluster
from steplog.settings import Settings
from steplog.topics import ensure_topics, topic_specs
from tests.cluster_fixtures import cluster_settings, restarted_after
from tests.conftest import announce, free_port, run_cli, wait_for

CLUSTER_LINES = ("kafka", "brokers", "partitions", "replication")
CHECK_TIMEOUT_S = 2.0
FAIL_WITHIN_S = 10.0


def cluster_findings(settings: Settings) -> dict[str, Finding]:
    names = settings.topics
    snapshot = asyncio.run(read_cluster(access(settings), settings.topic_prefix,
                                        timeout=CHECK_TIMEOUT_S))
    return {f.name: f for f in classify(snapshot, (names.events, names.flows))}


def all_ok(findings: dict[str, Finding]) -> bool:
    return all(findings.get(name, Finding(name, Level.FAIL, "absent")).level is Level.OK
               for name in CLUSTER_LINES)


def status_lines(settings: Settings) -> dict[str, str]:
    """`steplog status`'s lines by check name (no processors run here: those lines fail)."""
    done = run_cli(settings, "status", timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    return {line.split()[1]: line for line in done.stdout.splitlines()}


def test_one_broker_with_its_topics_is_ok_on_every_cluster_line(topics: Settings) -> None:
    found = cluster_findings(topics)
    assert [found[name].level for name in CLUSTER_LINES] == [Level.OK] * 4, found
    assert found["brokers"].detail == "1 of 1 alive (1)"
    assert "led and in sync" in found["partitions"].detail


def test_status_names_the_bootstrap_hosts_that_do_not_answer(topics: Settings) -> None:
    closed = f"127.0.0.1:{free_port()}"
    lines = status_lines(topics.model_copy(
        update={"kafka_bootstrap": f"{topics.kafka_bootstrap},{closed}"}))
    assert lines["kafka"].startswith(
        f"warn kafka         {topics.kafka_bootstrap} answers; not answering: {closed} "
        "(ConnectionRefusedError"), lines["kafka"]
    for name in ("brokers", "partitions", "replication"):
        assert lines[name].startswith("ok "), lines[name]

    other = f"127.0.0.1:{free_port()}"
    nobody = cluster_findings(topics.model_copy(update={"kafka_bootstrap": f"{closed},{other}"}))
    assert list(nobody) == ["kafka"]
    assert nobody["kafka"].level is Level.FAIL
    assert nobody["kafka"].detail.startswith(f"no bootstrap host answers: {closed} (")
    assert f"; {other} (ConnectionRefusedError" in nobody["kafka"].detail


def test_status_fails_naming_a_killed_broker_until_its_partitions_are_back_in_sync(
    kafka_cluster: LocalCluster, clickhouse_dsn: str, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    settings = cluster_settings(kafka_cluster, clickhouse_dsn, tmp_path / "steplog").model_copy(
        update={"replication_factor": 3, "check_timeout_s": CHECK_TIMEOUT_S})
    began = time.monotonic()
    asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
    seen: list[dict[str, Finding]] = []

    def look(holds: Callable[[dict[str, Finding]], bool]) -> bool:
        seen.append(cluster_findings(settings))
        return holds(seen[-1])

    wait_for(lambda: look(all_ok), timeout=30, what=f"a healthy cluster: {seen[-1:]}")
    assert seen[-1]["brokers"].detail == "3 of 3 alive (1, 2, 3)"
    victim = kafka_cluster.leading_node(settings.topics.events)
    was_controller = victim == kafka_cluster.active_controller()
    after_kill = len(seen)
    with restarted_after(kafka_cluster):
        killed = time.monotonic()
        kafka_cluster.kill(victim)
        wait_for(lambda: look(lambda f: f["brokers"].level is Level.FAIL
                              and f"broker {victim} dead" in f["brokers"].detail),
                 timeout=FAIL_WITHIN_S, what=f"status naming broker {victim}: {seen[-1:]}")
        failed_after = time.monotonic() - killed
        assert seen[-1]["partitions"].level is Level.FAIL
        assert settings.topics.events in seen[-1]["partitions"].detail

        # Fenced: gone from the metadata, still named by the replica lists.
        wait_for(lambda: look(lambda f: f"broker {victim} dead: not registered"
                              in f["brokers"].detail), timeout=30,
                 what=f"broker {victim} fenced: {seen[-1:]}")
        fenced_after = time.monotonic() - killed
        cli_began = time.monotonic()
        lines = {line.split()[1]: line for line in run_cli(settings, "status").stdout.splitlines()}
        cli_took = time.monotonic() - cli_began
        assert lines["brokers"].startswith(f"FAIL brokers       broker {victim} dead"), lines
        assert lines["partitions"].startswith("FAIL partitions    under-replicated: "), lines

        restart_began = time.monotonic()
        kafka_cluster.restart(victim)
        restarted = time.monotonic()
        wait_for(lambda: look(all_ok), timeout=30, what=f"status ok in sync: {seen[-1:]}")
    # Between the kill and the partitions back in sync, no look said ok.
    assert not any(all_ok(findings) for findings in seen[after_kill:-1])
    announce(pytestconfig,
             f"\nstatus FAIL {failed_after:.1f}s after SIGKILL of broker {victim} (active "
             f"controller: {was_controller}), fenced after {fenced_after:.1f}s, ok again "
             f"{time.monotonic() - restarted:.1f}s after its restart (which took "
             f"{restarted - restart_began:.1f}s); topics created and in sync in "
             f"{killed - began:.1f}s, `steplog status` took {cli_took:.1f}s")
