"""How the processors' projection writes are going, for health checks.

A write that fails for a transient reason (the engine away, a timeout) is retried until it
succeeds and the consumer commits nothing meanwhile; lag grows, but nothing is lost. Such a
stall must still be visible: `failing_for` is how long writes have failed without a success in
between, and `under_way_for` how long the oldest write still running has taken (an engine that
does not answer at all never fails a write). The health endpoint compares both with its bound.

Updated from the processors' event loop only (`ProjectionWrites`, around each write's thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["WriteHealth"]


@dataclass
class WriteHealth:
    """The outcome of the latest projection writes, and the writes under way (one per
    process: the fold's and the flows' writes alike)."""

    clock: Callable[[], float] = time.monotonic
    failing_since: float | None = None
    """When the first of the failures since the last success happened (clock time)."""
    last_error: str = ""
    """The newest failure's message, kept after a success for the record."""
    failures: int = 0
    """Failed attempts since the last success."""
    refused_rows: int = 0
    """Rows the engine refused for good since start (dead-lettered, not retried)."""
    _under_way: list[float] = field(default_factory=list)
    """When each write still running began."""

    def began(self) -> float:
        """A write begins; returns the token `ended` takes."""
        started = self.clock()
        self._under_way.append(started)
        return started

    def ended(self, started: float) -> None:
        self._under_way.remove(started)

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

    def under_way_for(self) -> float:
        """Seconds the oldest write still running has taken; 0 when none is."""
        if not self._under_way:
            return 0.0
        return self.clock() - min(self._under_way)
