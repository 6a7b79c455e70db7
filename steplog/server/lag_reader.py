"""The processors' lag for the operations page: events on the events topic past the processors
group's committed offsets, per partition.

Lag is Kafka's to tell (the projections cannot know what they have not been sent), so this is
the one thing the web service asks Kafka. It asks at most once per `max_age` seconds however
many people watch the page, over one admin client and one consumer kept for the life of the
service, and a broker that does not answer within `timeout` makes the lag unknown, with the
reason, rather than the page slow.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

import steplog.kafka as kafka
from steplog.projections.read_models import LagView
from steplog.server.health import group_positions
from steplog.settings import Settings

__all__ = ["LagReader"]

_MAX_AGE_S: Final = 5.0
_TIMEOUT_S: Final = 3.0


class LagReader:
    def __init__(
        self, settings: Settings, *, max_age: float = _MAX_AGE_S, timeout: float = _TIMEOUT_S
    ) -> None:
        self._settings = settings
        self._max_age = max_age
        self._timeout = timeout
        self._clients: tuple[AIOKafkaAdminClient, AIOKafkaConsumer] | None = None
        self._last: tuple[float, LagView] | None = None
        self._lock = asyncio.Lock()

    async def lag(self) -> LagView:
        async with self._lock:  # one look at Kafka however many pages ask at once
            if self._last is not None and time.monotonic() - self._last[0] < self._max_age:
                return self._last[1]
            view = await self._read()
            self._last = (time.monotonic(), view)
            return view

    async def _read(self) -> LagView:
        settings, topic = self._settings, self._settings.topics.events
        try:
            admin, consumer = await asyncio.wait_for(self._started(), self._timeout)
            positions = await asyncio.wait_for(
                group_positions(admin, consumer, topic), self._timeout
            )
        except Exception as exc:
            await self.close()  # started afresh at the next look
            reason = "no answer" if isinstance(exc, TimeoutError) else repr(exc)
            return LagView(
                total=None, partitions={},
                error=f"cannot read the lag of group {settings.processors_group!r} from Kafka "
                f"at {settings.kafka_bootstrap}: {reason}",
            )
        partitions = {
            f"{tp.topic}[{tp.partition}]": end - committed
            for tp, (committed, end) in positions.items()
        }
        return LagView(total=sum(partitions.values()), partitions=partitions, error=None)

    async def _started(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._clients is None:
            settings = self._settings
            admin = kafka.admin_client(settings.kafka_bootstrap)
            consumer = kafka.consumer(
                settings.kafka_bootstrap, group_id=settings.processors_group,
                enable_auto_commit=False,
            )
            self._clients = (admin, consumer)
            await admin.start()
            await consumer.start()
        return self._clients

    async def close(self) -> None:
        clients, self._clients = self._clients, None
        if clients is not None:
            admin, consumer = clients
            await consumer.stop()
            await admin.close()
