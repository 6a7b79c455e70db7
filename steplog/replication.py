"""How many replicas Steplog's topics get, and what differs or deserves a warning (pure: the
Kafka calls are in steplog/topics.py).

Replication follows the cluster: a topic takes STEPLOG_REPLICATION_FACTOR when it is set, else
the cluster's `default.replication.factor` (an operator who runs three brokers has said so
there already), and `min.insync.replicas` = replicas - 1, at least 1, unless
STEPLOG_MIN_INSYNC_REPLICAS says otherwise: with acks=all a write is then acknowledged once
it is on every replica but one, so losing any one broker loses no acknowledged event and does
not stop writes.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from steplog.errors import TopicError

if TYPE_CHECKING:
    from steplog.topics import TopicSpec

MIN_INSYNC = "min.insync.replicas"
REASSIGN_COMMAND = "steplog topics ensure --reassign"
"""What aligns the replication factors (steplog/topics.py says why it is not done unasked)."""


def min_insync_replicas(replicas: int, configured: int | None) -> int:
    """`configured`, or one less than `replicas` (at least 1); TopicError when no write could
    be acknowledged (more in-sync replicas asked than there are replicas)."""
    wanted = max(1, replicas - 1) if configured is None else configured
    if wanted > replicas:
        raise TopicError(
            f"STEPLOG_MIN_INSYNC_REPLICAS={wanted} exceeds the {replicas} replicas of the "
            "topics: no write with acks=all could be acknowledged; lower it or raise "
            "STEPLOG_REPLICATION_FACTOR"
        )
    return wanted


def resolve_spec(spec: TopicSpec, cluster_default: int) -> TopicSpec:
    """`spec` with a number of replicas (its own, else `cluster_default`) and the
    `min.insync.replicas` among its configs (its own, else replicas - 1, at least 1)."""
    replicas = spec.replication_factor or cluster_default
    min_insync = min_insync_replicas(replicas, spec.min_insync_replicas)
    configs = {**spec.configs, MIN_INSYNC: str(min_insync)}
    return dataclasses.replace(spec, replication_factor=replicas, configs=configs)


@dataclass(frozen=True)
class ReplicaMismatch:
    """A topic whose partitions do not all have the replicas asked for."""

    topic: str
    wanted: int
    actual: tuple[int, ...]
    """The distinct replica counts of its partitions, ascending."""

    def describe(self) -> str:
        counts = " or ".join(str(n) for n in self.actual)
        return f"topic {self.topic!r} has {counts} replicas per partition, {self.wanted} asked"


def replica_counts(replicas: Mapping[int, Sequence[int]]) -> tuple[int, ...]:
    """The distinct replica counts of a topic's partitions (partition -> replica broker ids)."""
    return tuple(sorted({len(brokers) for brokers in replicas.values()}))


def replica_mismatches(
    specs: Sequence[TopicSpec], layouts: Mapping[str, Mapping[int, Sequence[int]]]
) -> list[ReplicaMismatch]:
    """The resolved `specs` whose topics (in `layouts`: topic -> partition -> replicas) have
    other replica counts than asked. Topics missing from `layouts` are not compared."""
    mismatches = []
    for spec in specs:
        if spec.name not in layouts:
            continue
        actual = replica_counts(layouts[spec.name])
        if actual != (spec.replication_factor,):
            assert spec.replication_factor is not None, "compare resolved specs"
            mismatches.append(ReplicaMismatch(spec.name, spec.replication_factor, actual))
    return mismatches


def replication_warnings(
    specs: Sequence[TopicSpec], layouts: Mapping[str, Mapping[int, Sequence[int]]], brokers: int
) -> list[str]:
    """What an operator must hear about the replication of these topics on a cluster of
    `brokers`: topics with one replica among several brokers (the loss of that broker loses
    acknowledged events and stops the topic), and topics with fewer replicas than asked."""
    single = [s.name for s in specs
              if s.name in layouts and min(replica_counts(layouts[s.name])) == 1]
    fewer = [m for m in replica_mismatches(specs, layouts) if min(m.actual) < m.wanted]
    warnings = []
    if single and brokers > 1:
        warnings.append(
            f"topics {single} have one replica on a cluster of {brokers} brokers: losing one "
            "broker loses acknowledged events and stops those topics; unset "
            "STEPLOG_REPLICATION_FACTOR (the cluster's default.replication.factor) or raise it, "
            f"then run `{REASSIGN_COMMAND}`"
        )
    if fewer:
        warnings.append(
            "fewer replicas than asked: " + "; ".join(m.describe() for m in fewer)
            + f". Run `{REASSIGN_COMMAND}` to add them"
        )
    return warnings


def reassignment(
    layout: Mapping[int, Sequence[int]], wanted: int, brokers: Sequence[int], load: Counter[int]
) -> dict[int, list[int]]:
    """New replica lists for the partitions of `layout` (partition -> replicas) that do not
    have `wanted` replicas. A partition keeps its replicas in order (its preferred leader
    stays first); one that grows takes the brokers holding the fewest replicas in `load`
    (updated here, so that topics planned one after another spread too), one that shrinks
    drops its last replicas."""
    if wanted > len(brokers):
        raise TopicError(
            f"{wanted} replicas asked on a cluster of {len(brokers)} brokers {sorted(brokers)}: "
            "lower STEPLOG_REPLICATION_FACTOR or add brokers"
        )
    plan = {}
    for partition, replicas in sorted(layout.items()):
        if len(replicas) == wanted:
            continue
        new = list(replicas[:wanted])
        while len(new) < wanted:
            broker = min((b for b in brokers if b not in new), key=lambda b: (load[b], b))
            new.append(broker)
            load[broker] += 1
        for dropped in replicas[wanted:]:
            load[dropped] -= 1
        plan[partition] = new
    return plan
