"""How the processors' projection writes are going, for health checks.

A write that fails for a transient reason (the engine away, a timeout) is retried until it
succeeds and the consumer commits nothing meanwhile; lag grows, but nothing is lost. Such a
stall must still be visible: `failing_for` is how long writes have failed without a success in
between, which the health endpoint compares with its bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["WriteHealth"]


@dataclass
class WriteHealth:
    """The outcome of the latest projection writes (one per process, updated by the fold host)."""

    clock: Callable[[], float] = time.monotonic
    failing_since: float | None = None
    """When the first of the failures since the last success happened (clock time)."""
    last_error: str = ""
    """The newest failure's message, kept after a success for the record."""
    failures: int = 0
    """Failed attempts since the last success."""
    refused_rows: int = field(default=0)
    """Rows the engine refused for good since start (dead-lettered, not retried)."""

    def failed(self, error: BaseException | str) -> None:
        if self.failing_since is None:
            self.failing_since = self.clock()
        self.failures += 1
        self.last_error = str(error)

    def succeeded(self, refused_rows: int = 0) -> None:
        self.failing_since = None
        self.failures = 0
        self.refused_rows += refused_rows

    def failing_for(self) -> float:
        """Seconds since writes started failing; 0 while they succeed."""
        if self.failing_since is None:
            return 0.0
        return self.clock() - self.failing_since
