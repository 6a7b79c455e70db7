"""Replication of Steplog's topics, the pure part (steplog/replication.py): what a topic asks
for, what differs, what an operator is warned about, how partitions are reassigned."""

from __future__ import annotations

from collections import Counter

import pytest

from steplog.errors import TopicError
from steplog.replication import (
    ReplicaMismatch,
    reassignment,
    replica_mismatches,
    replication_warnings,
    resolve_spec,
)
from steplog.topics import TopicSpec


def spec(name: str = "t", replicas: int | None = None, min_insync: int | None = None) -> TopicSpec:
    return TopicSpec(name=name, partitions=2, partitions_setting=None, replication_factor=replicas,
                     configs={"cleanup.policy": "delete"}, min_insync_replicas=min_insync)


def test_unset_replication_takes_the_cluster_default_and_one_less_in_sync() -> None:
    resolved = resolve_spec(spec(), cluster_default=3)
    assert resolved.replication_factor == 3
    assert resolved.configs == {"cleanup.policy": "delete", "min.insync.replicas": "2"}


def test_one_replica_keeps_one_in_sync() -> None:
    assert resolve_spec(spec(), cluster_default=1).configs["min.insync.replicas"] == "1"


def test_configured_replication_and_min_insync_win_over_the_cluster() -> None:
    resolved = resolve_spec(spec(replicas=5, min_insync=3), cluster_default=3)
    assert resolved.replication_factor == 5
    assert resolved.configs["min.insync.replicas"] == "3"


def test_more_in_sync_replicas_than_replicas_is_an_error_naming_the_variable() -> None:
    with pytest.raises(TopicError, match="STEPLOG_MIN_INSYNC_REPLICAS=3 exceeds the 2 replicas"):
        resolve_spec(spec(replicas=2, min_insync=3), cluster_default=3)


def test_a_topic_with_other_replica_counts_is_a_mismatch() -> None:
    layouts = {"a": {0: [1, 2, 3], 1: [2, 3, 1]}, "b": {0: [1], 1: [2, 3]}, "c": {0: [1]}}
    specs = [resolve_spec(spec(name), 3) for name in ("a", "b", "c", "missing")]
    assert replica_mismatches(specs, layouts) == [
        ReplicaMismatch("b", 3, (1, 2)), ReplicaMismatch("c", 3, (1,))
    ]
    assert ReplicaMismatch("b", 3, (1, 2)).describe() == (
        "topic 'b' has 1 or 2 replicas per partition, 3 asked"
    )


def test_one_replica_on_several_brokers_is_warned_about_even_when_asked_for() -> None:
    (warning,) = replication_warnings([resolve_spec(spec("a", replicas=1), 3)],
                                      {"a": {0: [1]}}, brokers=3)
    assert "topics ['a'] have one replica on a cluster of 3 brokers" in warning


def test_one_replica_on_one_broker_is_no_warning() -> None:
    assert replication_warnings([resolve_spec(spec("a"), 1)], {"a": {0: [1]}}, brokers=1) == []


def test_fewer_replicas_than_asked_are_warned_about_with_the_command() -> None:
    warnings = replication_warnings([resolve_spec(spec("a"), 3)], {"a": {0: [1, 2]}}, brokers=3)
    assert warnings == [
        "fewer replicas than asked: topic 'a' has 2 replicas per partition, 3 asked. "
        "Run `steplog topics ensure --reassign` to add them"
    ]


def test_a_growing_partition_keeps_its_leader_first_and_takes_the_least_loaded_brokers() -> None:
    load = Counter({1: 4, 2: 1, 3: 0, 4: 2})
    plan = reassignment({0: [1], 1: [2], 2: [3, 1, 2]}, 3, [1, 2, 3, 4], load)
    assert plan == {0: [1, 3, 2], 1: [2, 3, 4]}


def test_a_shrinking_partition_drops_its_last_replicas() -> None:
    assert reassignment({0: [2, 1, 3]}, 2, [1, 2, 3], Counter()) == {0: [2, 1]}


def test_more_replicas_than_brokers_is_an_error() -> None:
    with pytest.raises(TopicError, match="3 replicas asked on a cluster of 2 brokers"):
        reassignment({0: [1]}, 3, [1, 2], Counter())
