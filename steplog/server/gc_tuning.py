"""The cyclic garbage collector tuned for Steplog's own batch processes: the processors, the
store process, replay and its fold processes. Never called by the SDK or a worker: those run in
a service's process, whose collector is the service's business.

Why: CPython runs a young-generation collection every 700 net allocations of container objects
(`gc.get_threshold()`), and each one walks every container allocated since, then promotes the
survivors to generations it walks again later. A batch of 10,000 events is about 100,000
containers (decoded models and their dicts, run states, rows) that all live until the batch is
written, so the collector walked each of them several times while finding nothing: these
processes free their garbage by reference counting, and make few reference cycles. Measured on
20,000 events (BENCHMARKS.md): decode 11.5 -> 6.8 µs per event, fold 14.5 -> 10.1 µs, and the
store process's unpickling of the rows 6.7 -> 1.6 µs.

The collector still runs, less often: a cycle made by a library (an exception's traceback, say)
is freed within a batch or two.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["YOUNG_THRESHOLD", "tune_gc_for_batches"]

YOUNG_THRESHOLD: Final = 50_000
"""Net container allocations between two young-generation collections (CPython's default is
700); the older generations keep their default ratios."""


def tune_gc_for_batches() -> None:
    """Collect less often, and never scan the objects of start-up again (modules, pydantic's
    schemas, settings): `gc.freeze()` moves them to a generation the collector ignores."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
