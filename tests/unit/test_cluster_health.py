"""`steplog status`'s judgement of a Kafka cluster, from snapshots (no broker): FAIL while a
broker is dead or a partition is leaderless, under min.insync.replicas or under-replicated;
WARN while redundancy is missing by configuration; which hosts answered, by name."""

from __future__ import annotations

from steplog.server.cluster_health import (
    ClusterMetadata,
    ClusterSnapshot,
    Finding,
    HostAnswer,
    Level,
    PartitionState,
    classify,
    compact_partitions,
)

EVENTS = "steplog.events"
FLOWS = "steplog.flows"
REQUIRED = (EVENTS, FLOWS)
ADDRESSES = {1: "127.0.0.1:9091", 2: "127.0.0.1:9092", 3: "127.0.0.1:9093"}
REFUSED = "ConnectionRefusedError: [Errno 111] Connect call failed"


def partitions(topic: str, count: int, replicas: tuple[int, ...],
               isr: tuple[int, ...] | None = None, leader: int | None = None
               ) -> list[PartitionState]:
    return [PartitionState(topic, n, replicas[0] if leader is None else leader, replicas,
                           replicas if isr is None else isr) for n in range(count)]


def snapshot(
    parts: list[PartitionState], *, registered: tuple[int, ...] = (1, 2, 3),
    silent: dict[int, str] | None = None, min_insync: int = 2,
    bootstrap_errors: dict[int, str] | None = None,
) -> ClusterSnapshot:
    silent, bootstrap_errors = silent or {}, bootstrap_errors or {}
    return ClusterSnapshot(
        bootstrap=tuple(HostAnswer(address, bootstrap_errors.get(broker))
                        for broker, address in ADDRESSES.items()),
        metadata=ClusterMetadata(
            brokers={b: HostAnswer(ADDRESSES[b], silent.get(b)) for b in registered},
            topics=frozenset({p.topic for p in parts}),
            partitions=tuple(parts),
            min_insync={p.topic: min_insync for p in parts},
        ),
    )


def by_name(findings: list[Finding]) -> dict[str, Finding]:
    return {finding.name: finding for finding in findings}


def healthy_cluster() -> list[PartitionState]:
    return partitions(EVENTS, 6, (1, 2, 3)) + partitions(FLOWS, 1, (2, 3, 1))


def test_a_healthy_replicated_cluster_is_ok_on_every_line() -> None:
    found = by_name(classify(snapshot(healthy_cluster()), REQUIRED))
    assert [f.level for f in found.values()] == [Level.OK] * 4
    assert found["brokers"].detail == "3 of 3 alive (1, 2, 3)"
    assert found["partitions"].detail == "7 partitions of 2 topics led and in sync"
    assert found["replication"].detail == "3 replica(s), min.insync.replicas 2: 2 topic(s)"


def test_a_single_broker_with_one_replica_is_ok_not_warned() -> None:
    parts = partitions(EVENTS, 3, (1,)) + partitions(FLOWS, 1, (1,))
    found = by_name(classify(snapshot(parts, registered=(1,), min_insync=1), REQUIRED))
    assert all(f.level is Level.OK for f in found.values() if f.name != "kafka")
    assert found["brokers"].detail == "1 of 1 alive (1)"


def test_a_killed_broker_not_yet_fenced_fails_at_once_naming_it_and_its_partitions() -> None:
    """Still registered, still leading and in every ISR: its silence is what counts."""
    found = by_name(classify(snapshot(healthy_cluster(), silent={1: REFUSED},
                                      bootstrap_errors={1: REFUSED}), REQUIRED))
    assert found["brokers"].level is Level.FAIL
    assert found["brokers"].detail.startswith(
        f"broker 1 dead: 127.0.0.1:9091 does not answer ({REFUSED})")
    assert found["brokers"].detail.endswith("2 of 3 alive (2, 3)")
    assert found["partitions"].level is Level.FAIL
    assert found["partitions"].detail == (
        f"without a live leader: {EVENTS}[0-5]; under-replicated: {FLOWS}[0]")
    assert found["kafka"].level is Level.WARN
    assert found["kafka"].detail == (
        f"127.0.0.1:9092, 127.0.0.1:9093 answer; not answering: 127.0.0.1:9091 ({REFUSED})")


def test_a_fenced_broker_is_named_from_the_replica_lists() -> None:
    parts = partitions(EVENTS, 6, (1, 2, 3), isr=(2, 3), leader=2)
    found = by_name(classify(snapshot(parts, registered=(2, 3)), REQUIRED[:1]))
    assert found["brokers"].detail.startswith("broker 1 dead: not registered")
    assert found["partitions"].detail == f"under-replicated: {EVENTS}[0-5]"


def test_a_returned_broker_fails_until_its_replicas_are_back_in_sync() -> None:
    """Alive and answering again, but not yet in the ISR: one more loss would lose writes."""
    lagging = (partitions(EVENTS, 2, (2, 3, 1), isr=(2, 3))
               + partitions(EVENTS, 4, (2, 3, 1))[2:])
    found = by_name(classify(snapshot(lagging), REQUIRED[:1]))
    assert found["brokers"].level is Level.OK
    assert found["partitions"].level is Level.FAIL
    assert found["partitions"].detail == f"under-replicated: {EVENTS}[0,1]"
    in_sync = by_name(classify(snapshot(partitions(EVENTS, 4, (2, 3, 1))), REQUIRED[:1]))
    assert in_sync["partitions"].level is Level.OK


def test_a_partition_under_min_insync_replicas_is_named_as_refusing_writes() -> None:
    parts = partitions(EVENTS, 3, (1, 2, 3), isr=(1,))
    found = by_name(classify(snapshot(parts, registered=(1,)), REQUIRED[:1]))
    assert found["partitions"].detail == (
        f"under min.insync.replicas (writes refused): {EVENTS}[0-2]")
    assert found["brokers"].detail.startswith("broker 2 dead: not registered")
    assert "broker 3 dead" in found["brokers"].detail


def test_one_replica_on_several_brokers_and_min_insync_one_are_warnings() -> None:
    parts = partitions(EVENTS, 3, (1,)) + partitions(FLOWS, 1, (1, 2, 3))
    found = by_name(classify(snapshot(parts, min_insync=1), REQUIRED))
    replication = found["replication"]
    assert replication.level is Level.WARN
    assert f"1 replica on a 3-broker cluster (lost with its broker): {EVENTS}" in (
        replication.detail)
    assert "min.insync.replicas 1 with several replicas" in replication.detail
    assert replication.detail.endswith(FLOWS)
    assert found["partitions"].level is Level.OK


def test_one_replica_lost_with_its_broker_is_leaderless() -> None:
    parts = partitions(EVENTS, 2, (1,)) + partitions(EVENTS, 4, (2,))[2:]
    found = by_name(classify(snapshot(parts, silent={1: REFUSED}, min_insync=1), REQUIRED[:1]))
    assert found["partitions"].detail == f"without a live leader: {EVENTS}[0,1]"


def test_missing_topics_fail_naming_them_and_the_command() -> None:
    found = by_name(classify(snapshot(partitions(EVENTS, 1, (1, 2, 3))), REQUIRED))
    assert found["kafka"].level is Level.FAIL
    assert found["kafka"].detail.startswith(
        f"missing topics ['{FLOWS}'] (run `steplog topics ensure`)")


def test_no_host_answering_names_each_and_why() -> None:
    hosts = (HostAnswer("127.0.0.1:9091", REFUSED), HostAnswer("10.0.0.9:9092", "no answer "
                                                               "within 5s"))
    findings = classify(ClusterSnapshot(hosts, "no bootstrap host answers"), REQUIRED)
    assert findings == [Finding("kafka", Level.FAIL, (
        f"no bootstrap host answers: 127.0.0.1:9091 ({REFUSED}); 10.0.0.9:9092 (no answer "
        "within 5s)"))]


def test_hosts_that_answer_without_metadata_fail_saying_so() -> None:
    hosts = (HostAnswer("127.0.0.1:9091", None),)
    [kafka] = classify(ClusterSnapshot(hosts, "127.0.0.1:9091 no answer within 5s"), REQUIRED)
    assert kafka.level is Level.FAIL
    assert kafka.detail == "127.0.0.1:9091 answers; but no metadata: 127.0.0.1:9091 no answer " \
                           "within 5s"


def test_partitions_are_named_compactly() -> None:
    parts = [PartitionState(topic, n, 1, (1,), (1,))
             for topic, numbers in (("b", (1,)), ("a", (5, 0, 1, 2, 7, 8)))
             for n in numbers]
    assert compact_partitions(parts) == "a[0-2,5,7,8], b[1]"
