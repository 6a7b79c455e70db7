"""The worker's Kafka sink: where the passes of its runs write, and where each write landed.

Events go to the events topic keyed by run id (one run, one partition, in order), messages of
the signals topic keyed by name. The sink remembers, per run, where this worker's newest
acknowledged write of it is: a resume whose history position is at or past it needs no read
of the log (producers.run_executor).

The producer is idempotent and renewed when it loses its sequence state (a checkpoint that
expired while its partition had no leader, OutOfOrderSequenceNumber, UnknownProducerId, a
fenced epoch): the write is then sent again through the new producer, after the run's earlier
writes, and its acknowledgement is what the pass waits for (producers.renewable_producer). So
such a failure costs the pass nothing: it does not abort, and no step runs again because of
it. The copy that may land twice has the same `event_id`, which the fold drops.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Final

from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata

from steplog.schemas.codec import encode
from steplog.schemas.record_signing import RecordSigner, signature_headers
from steplog.settings import Settings

from steplog.schemas.signals import WaitEnded

from .pass_writes import SignalsWrite, WorkflowEvent
from .recent_runs import REMEMBERED_RUNS, remember
from .record_batches import ProducerDiscarded
from .renewable_producer import RenewableProducer

__all__ = ["RETRY_DELAYS", "KafkaRunSink"]

log = logging.getLogger("steplog.worker")

RETRY_DELAYS: Final = (0.1, 0.5, 1.0, 2.0, 5.0)
"""Seconds between the attempts of a write (or a pass) that failed on the broker."""


class KafkaRunSink:
    """A pass's writes (a `RunSink`) over the worker's producer. `stopping()` says whether
    the worker is stopping (a write retried until then gives up)."""

    def __init__(
        self,
        producer: RenewableProducer,
        settings: Settings,
        stopping: Callable[[], bool],
        signer: RecordSigner | None = None,
    ) -> None:
        self._producer = producer
        self._signer = signer
        """The worker's own key, which signs every write (README, Security)."""
        self._events = settings.topics.events
        self._signals = settings.topics.signals
        self._max_bytes = settings.max_event_bytes
        self._stopping = stopping
        self._written_at: OrderedDict[str, tuple[int, int]] = OrderedDict()
        """Per run, where this worker's newest acknowledged write of it is."""

    async def send_event(self, event: WorkflowEvent) -> asyncio.Future[RecordMetadata]:
        value = encode(event, max_bytes=self._max_bytes)
        future = await self._producer.send(
            self._events, event.run_id.encode(), value,
            signature_headers(self._signer, self._events, value),
        )
        future.add_done_callback(partial(self._acknowledged, event.run_id))
        return future

    def _acknowledged(self, run_id: str, future: asyncio.Future[RecordMetadata]) -> None:
        if not future.cancelled() and future.exception() is None:
            written = future.result()
            self._note_written(run_id, written.partition, written.offset)

    async def send_signal(
        self, message: SignalsWrite | WaitEnded
    ) -> asyncio.Future[RecordMetadata]:
        # WaitEnded too: the releases of a run's cancel_on registrations (producers/cancel_on.py).
        value = encode(message, max_bytes=self._max_bytes)
        return await self._producer.send(
            self._signals, message.name.encode(), value,
            signature_headers(self._signer, self._signals, value),
        )

    async def write_with_retries(self, event: WorkflowEvent) -> tuple[int, int] | None:
        """Write one event, retrying while the worker runs; where it was written (partition,
        offset), or None if it gave up (stopping)."""
        for attempt in range(1_000_000):
            try:
                written = await (await self.send_event(event))
                return written.partition, written.offset
            except (KafkaError, OSError, ProducerDiscarded) as exc:
                if self._stopping():
                    return None
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                log.warning("writing %s of run %s failed (%r); again in %.1fs",
                            event.type, event.run_id, exc, delay)
                await asyncio.sleep(delay)
        return None

    def _note_written(self, run_id: str, partition: int, offset: int) -> None:
        held = self._written_at.get(run_id)
        if held is None or held[0] != partition or held[1] < offset:
            remember(self._written_at, run_id, (partition, offset), REMEMBERED_RUNS)

    def fold_saw_our_writes(self, run_id: str, partition: int, offset: int) -> bool:
        """Whether a history at (partition, offset) covers every write of the run by this
        worker, so that no worker's write can follow it in the log."""
        written = self._written_at.get(run_id)
        return written is not None and written[0] == partition and written[1] <= offset

    def forget_writes(self) -> None:
        """Partitions were handed over: another worker may write these runs now, so what this
        one wrote is no longer the whole story of any of them."""
        self._written_at.clear()
