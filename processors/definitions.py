"""Every processors process follows the flows topic: the flow and workflow definitions.

Each process folds runs of whichever events partitions its group gives it, so each needs every
flow's graph (the fold) and every app's workflows (the dispatcher's app resolution). So every
process reads the whole compacted topic with a consumer of its own: no group, every partition,
from the beginning, then whatever is written while it runs; it is the topic's only reader. What
is read goes to the flows' host (processors/flows_host.py: learned, written to the `flows`
table, unusable messages dead-lettered). Definitions are idempotent to learn and to write again
(the newest `ts` per key wins; the table keeps one row per flow), so starting from the beginning
needs no stored position.

The same reader is the processors' start-up read: it says when it has learned everything the
topic held when it began (`caught_up`), and the fold and the timers wait for that, so a run is
never folded, nor a scheduled start resolved, before the definitions written before it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from steplog.errors import TopicError
from steplog.kafka import consumer as kafka_consumer
from steplog.kafka import start_or_stop
from steplog.topics import topic_partitions

from .stateful_consumer import Record

__all__ = ["DefinitionsFollower"]

log = logging.getLogger("steplog.processors")

_RETRY_FIRST_S = 1.0
_RETRY_MAX_S = 30.0


@dataclass(frozen=True)
class DefinitionsFollower:
    """Hands every record of `topic` to `process`, a fetched batch at a time, from the
    topic's beginning until cancelled (`run`); sets `caught_up` once every one the topic held
    when following began is processed (at once when the topic does not exist yet: it holds
    none)."""

    bootstrap: str
    topic: str
    process: Callable[[Sequence[Record]], Awaitable[None]]
    """`FlowsHost.process_flows`."""
    caught_up: asyncio.Event
    max_fetch_bytes: int
    poll_ms: int = 1000

    async def run(self) -> None:
        """Follow the topic; a failure (a topic not created yet, a broker away) is logged and
        the topic read again from its beginning, 1 s later, then up to every 30 s."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((KafkaError, TopicError)),
            wait=wait_exponential(multiplier=_RETRY_FIRST_S, max=_RETRY_MAX_S),
            before_sleep=self._before_retry,
        ):
            with attempt:
                await self._follow()

    def _before_retry(self, state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, TopicError):
            self.caught_up.set()
        log.warning("following the definitions on %s failed, reading it again in %.0fs: %r",
                    self.topic, state.upcoming_sleep, failure)

    async def _follow(self) -> None:
        consumer = kafka_consumer(
            self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=self.max_fetch_bytes,
            client_id="steplog-definitions",
        )
        await start_or_stop(consumer)
        try:
            assigned = [TopicPartition(self.topic, p)
                        for p in await topic_partitions(self.bootstrap, self.topic)]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            ends = await consumer.end_offsets(assigned)
            while True:
                if not self.caught_up.is_set() and all(
                    [await consumer.position(tp) >= ends[tp] for tp in assigned]
                ):
                    self.caught_up.set()
                fetched = await consumer.getmany(timeout_ms=self.poll_ms)
                records = [record for batch in fetched.values() for record in batch]
                if records:
                    await self.process(records)
        finally:
            await consumer.stop()
