"""The log of runs in memory: a `RunSink` that keeps what passes write, in order, for the test
harness (producers.testing) in place of the worker's Kafka sink.

Each write is encoded as Kafka would get it (valid, within the size limit) and acknowledged at
once; events are kept per run, signals-topic messages (signals, wait registrations) in one list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from steplog.schemas.codec import DEFAULT_MAX_BYTES, encode
from steplog.schemas.signals import Signal, WaitRegistered

from .pass_writes import SignalsWrite, WorkflowEvent

__all__ = ["MemoryRunLog"]


class MemoryRunLog:
    """What the runs of a test wrote: `events_of(run_id)`, `signals`, `registrations`."""

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._events: dict[str, list[WorkflowEvent]] = {}
        self.signals: list[Signal] = []
        self.registrations: list[WaitRegistered] = []
        self._max_bytes = max_event_bytes

    def append(self, event: WorkflowEvent) -> None:
        """An event written by someone other than a pass (the harness playing the fold)."""
        encode(event, max_bytes=self._max_bytes)
        self._events.setdefault(event.run_id, []).append(event)

    def events_of(self, run_id: str) -> list[WorkflowEvent]:
        return list(self._events.get(run_id, ()))

    async def send_event(self, event: WorkflowEvent) -> Awaitable[object]:
        self.append(event)
        return _acknowledged()

    async def send_signal(self, message: SignalsWrite) -> Awaitable[object]:
        encode(message, max_bytes=self._max_bytes)
        if isinstance(message, Signal):
            self.signals.append(message)
        else:
            self.registrations.append(message)
        return _acknowledged()


def _acknowledged() -> asyncio.Future[object]:
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future
