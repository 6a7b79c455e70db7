"""How a worker consumes its commands: fetching while it has room, decoding, and routing each
command addressed to it (producers.run_executor); every other command is done at once. A
worker has one intake per topic it reads (the commands topic, and the runner-commands topic:
producers.worker); a command pinned to a runner is addressed only to workers of that runner.

Fetching pauses while `concurrency` runs are handled. A partition's end offset at assignment
is noted: a start_run at or past it is a first delivery (no previous owner can have handled
it), which lets its run execute at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

from steplog.errors import InvalidEventError
from steplog.schemas.codec import decode_command
from steplog.schemas.commands import CancelRun, Command, StartRun
from steplog.settings import Settings

from .command_commits import CommandCommits, CommandToken
from .run_executor import RunExecutor
from .workflow import ServedApp

__all__ = ["CommandIntake"]

log = logging.getLogger("steplog.worker")


class CommandIntake:
    """Consumes the commands topic for one app and hands each command on."""

    def __init__(
        self,
        app: ServedApp,
        settings: Settings,
        executor: RunExecutor,
        commits: CommandCommits,
        concurrency: int,
    ) -> None:
        self.app = app
        self.settings = settings
        self._executor = executor
        self._commits = commits
        self._concurrency = concurrency
        self._first_delivery_from: dict[TopicPartition, int] = {}
        """Per assigned partition, its end offset at assignment (module docstring)."""

    def listener(
        self,
        consumer: AIOKafkaConsumer,
        on_revoked: Callable[[set[TopicPartition]], Awaitable[None]],
    ) -> ConsumerRebalanceListener:
        """What the consumer's group calls on a rebalance; `on_revoked` hands runs over."""
        return _Rebalance(self, consumer, on_revoked)

    async def fetch(self, consumer: AIOKafkaConsumer) -> None:
        executor = self._executor
        paused: set[TopicPartition] = set()
        while True:
            room = self._concurrency - len(executor.handlers)
            if room <= 0:
                paused = set(consumer.assignment())
                consumer.pause(*paused)
                executor.room.clear()
                try:
                    await asyncio.wait_for(executor.room.wait(), timeout=1.0)
                except TimeoutError:
                    pass
                continue
            if paused:
                consumer.resume(*(paused & consumer.assignment()))
                paused = set()
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=room)
            except KafkaError as exc:  # the consumer retries by itself; say so and go on
                log.warning("fetching commands failed: %r", exc)
                await asyncio.sleep(1.0)
                continue
            for tp, messages in batches.items():
                for message in messages:
                    self._accept(tp, message.offset, message.value)

    def _accept(self, tp: TopicPartition, offset: int, value: bytes) -> None:
        self._executor.stats.commands += 1
        token = self._commits.received(tp, offset)
        try:
            limit = max(self.settings.max_event_bytes, len(value))
            command = decode_command(value, max_bytes=limit)
        except InvalidEventError as exc:
            # A command of another major version means the roll order was broken (schemas/
            # COMPATIBILITY.md: readers first): louder than a malformed one, and the reason
            # says to upgrade this worker. Skipped all the same: holding the partition for it
            # would stop every other run on it.
            level = logging.ERROR if exc.field == "schema_version" else logging.WARNING
            log.log(level, "skipping an invalid command at %s offset %d: %s", tp, offset, exc)
            self._commits.done(token)
            return
        if not self._addressed_here(command):
            self._commits.done(token)
            return
        if isinstance(command, CancelRun):
            self._executor.cancel(command)
            self._commits.done(token)
        elif isinstance(command, StartRun):
            self._executor.start(command, token, first_delivery=self._first_delivery(token))
        else:
            self._executor.resume(command, token)

    def _first_delivery(self, token: CommandToken) -> bool:
        first_from = self._first_delivery_from.get(token.tp)
        return first_from is not None and token.offset >= first_from

    async def note_first_deliveries(
        self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]
    ) -> None:
        if not assigned:
            return
        try:
            ends = await consumer.end_offsets(list(assigned))
        except KafkaError as exc:  # no fast starts on these partitions: still correct
            log.warning("reading the end offsets of %s failed: %r", sorted(assigned), exc)
            return
        self._first_delivery_from.update(ends)

    def _addressed_here(self, command: Command) -> bool:
        if command.project != self.app.project:
            return False
        if command.runner is not None and command.runner != self._executor.runner:
            return False  # pinned to another runner (the runner-commands topic: worker.py)
        if command.app is not None:
            return command.app == self.app.name
        if isinstance(command, CancelRun):
            return True  # only ever stops a run executing here
        # No app: a start of one of our workflows (a duplicate run.started elsewhere is
        # harmless); a resume needs one, or two apps could execute the run at once.
        return isinstance(command, StartRun) and command.workflow in self.app.workflows


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self,
        intake: CommandIntake,
        consumer: AIOKafkaConsumer,
        on_revoked: Callable[[set[TopicPartition]], Awaitable[None]],
    ) -> None:
        self._intake = intake
        self._consumer = consumer  # the first assignment may come before start() returns
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._intake.note_first_deliveries(self._consumer, assigned)
        partitions = sorted(tp.partition for tp in assigned)
        log.info("worker %s: assigned partitions %s", self._intake.app.name, partitions)
