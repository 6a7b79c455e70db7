"""An outage told once, not per attempt: one log line and one DeliveryFailing when delivery
starts failing, one line and one DeliveryRecovered when it works again.

While the broker is away the sender fails an attempt every few seconds (producers.delivery_loop);
each is noted here, and only the change from working to failing and back is told.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from steplog.errors import DeliveryFailing, DeliveryRecovered

from .send_buffer import DeliveryCounts

__all__ = ["OutageReport"]

log = logging.getLogger("steplog.producers.sender")  # the sender's lines, under its name


@dataclass(frozen=True)
class _Outage:
    began: float
    dropped: int
    failed: int


class OutageReport:
    """Whether delivery to `topic` is failing, and since when; `counts` reads the buffer's
    counts at a change, `clock` is time.monotonic's kind of clock."""

    def __init__(
        self,
        topic: str,
        counts: Callable[[], DeliveryCounts],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = topic
        self._counts = counts
        self._clock = clock
        self._outage: _Outage | None = None

    def failing(self, cause: BaseException) -> DeliveryFailing | None:
        """An attempt failed for a reason that may pass (the broker away). Returns the
        DeliveryFailing to tell when this starts an outage (it is logged), else None."""
        if self._outage is not None:
            return None
        undelivered, dropped, failed = self._counts()
        self._outage = _Outage(self._clock(), dropped, failed)
        failing = DeliveryFailing(self.topic, cause, undelivered)
        log.warning("%s", failing)
        return failing

    def delivering(self) -> DeliveryRecovered | None:
        """A chunk was delivered. Returns the DeliveryRecovered to tell when this ends an
        outage (it is logged), with what was lost meanwhile, else None."""
        outage, self._outage = self._outage, None
        if outage is None:
            return None
        _, dropped, failed = self._counts()
        recovered = DeliveryRecovered(
            self.topic, self._clock() - outage.began, dropped - outage.dropped,
            failed - outage.failed,
        )
        log.warning("%s", recovered)
        return recovered
