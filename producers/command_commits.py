"""Which commands a worker has done, and the offsets it commits for them (the failure protocol).

A command is done when its run has parked or ended (or the command needed nothing). Per
partition, the committed offset is the one after the highest offset below which every command
is done, so a command in flight holds back the commits of later ones. If the worker dies, every
command not done is delivered again: its pass re-reads the log, returns what was checkpointed
and re-executes only the step that was in flight (it had `step.started` but no outcome):
at-least-once for that step, exactly-once for the rest. A duplicate that finds the run parked
or ended writes nothing new.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

__all__ = ["CommandCommits", "CommandToken", "PartitionOffsets"]

log = logging.getLogger("steplog.worker")


@dataclass(frozen=True)
class CommandToken:
    """One command's place in the commands topic."""

    tp: TopicPartition
    offset: int


class PartitionOffsets:
    """The commands of one partition not yet done, and where its commit point is."""

    def __init__(self) -> None:
        self._open: OrderedDict[int, bool] = OrderedDict()

    def add(self, offset: int) -> None:
        self._open[offset] = False

    def finish(self, offset: int) -> int | None:
        """Mark a command done; the new commit offset if the commit point moved."""
        if offset not in self._open:
            return None
        self._open[offset] = True
        commit = None
        while self._open:
            first, done = next(iter(self._open.items()))
            if not done:
                break
            self._open.popitem(last=False)
            commit = first + 1
        return commit


class CommandCommits:
    """The commit points of the partitions assigned here, committed in the background
    (`commit_loop`) as commands are done. `consumers` has each topic's consumer (the commands
    topic's, and the runner-commands topic's: a group each) once it is started."""

    def __init__(self) -> None:
        self.consumers: dict[str, AIOKafkaConsumer] = {}
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._to_commit: dict[TopicPartition, int] = {}
        self._commit_wanted = asyncio.Event()

    def received(self, tp: TopicPartition, offset: int) -> CommandToken:
        """A command was fetched: it holds its partition's commit point until it is done."""
        self._offsets.setdefault(tp, PartitionOffsets()).add(offset)
        return CommandToken(tp, offset)

    def done(self, token: CommandToken) -> None:
        offsets = self._offsets.get(token.tp)
        if offsets is None:
            return  # the partition was handed over meanwhile
        commit = offsets.finish(token.offset)
        if commit is not None:
            self._to_commit[token.tp] = commit
            self._commit_wanted.set()

    async def commit_loop(self) -> None:
        while True:
            await self._commit_wanted.wait()
            self._commit_wanted.clear()
            await self.commit_now()

    async def commit_now(self) -> None:
        if not self._to_commit:
            return
        wanted, self._to_commit = self._to_commit, {}
        for topic, consumer in self.consumers.items():
            assigned = consumer.assignment()
            offsets = {
                tp: offset for tp, offset in wanted.items()
                if tp.topic == topic and tp in assigned
            }
            if not offsets:
                continue
            try:
                await consumer.commit(offsets)
            except KafkaError as exc:
                # Not fatal: a later commit covers these offsets, and at worst the commands
                # are delivered again and find their runs parked or ended.
                log.warning("committing %s failed: %r", offsets, exc)

    def forget(self, revoked: set[TopicPartition]) -> None:
        """The partitions were handed over: their commands are another worker's now."""
        for tp in revoked:
            self._offsets.pop(tp, None)
            self._to_commit.pop(tp, None)
