"""Is the processors' lag growing? A pure judgement over periodic samples of the lag.

"Grown for longer than the bound" means: over the last `bound` seconds the lag was never 0
and it is higher now than at the window's start. A lag that spikes and drains, or a backlog
that shrinks while it is consumed, is healthy; a lag that never empties and keeps rising means
the processors do not keep up (or do not consume at all). The samples come from whoever
measures the lag (steplog/server/process_health.py); time is whatever monotonic clock they use.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["LagTrend", "LagVerdict"]


@dataclass(frozen=True)
class LagVerdict:
    growing: bool
    detail: str


@dataclass
class LagTrend:
    bound: float
    """Seconds the lag must have been above 0 and rising before it is a failure."""
    samples: deque[tuple[float, int]] = field(default_factory=deque)
    """(time, lag) pairs, oldest first; only what the window needs is kept."""

    def add(self, at: float, lag: int) -> None:
        self.samples.append((at, lag))
        # Keep the newest sample at or before the window's start (the baseline) and after it.
        while len(self.samples) >= 2 and self.samples[1][0] <= at - self.bound:
            self.samples.popleft()

    def verdict(self) -> LagVerdict:
        if not self.samples:
            return LagVerdict(False, "no lag sampled yet")
        now, lag = self.samples[-1]
        start, baseline = self.samples[0]
        if now - start < self.bound:
            return LagVerdict(False, f"lag {lag} events (watched for {now - start:.0f}s of "
                                     f"the {self.bound:.0f}s window)")
        if any(sampled == 0 for _, sampled in self.samples):
            return LagVerdict(False, f"lag {lag} events (0 within the last {self.bound:.0f}s)")
        if lag <= baseline:
            return LagVerdict(False, f"lag {lag} events, not above the {baseline} of "
                                     f"{now - start:.0f}s ago")
        return LagVerdict(True, f"lag grew from {baseline} to {lag} events over "
                                f"{now - start:.0f}s without reaching 0 (bound "
                                f"{self.bound:.0f}s)")
