"""Waiting for a run's result: `RunHandle` and the one consumer behind every handle of a client.

    handle = client.start("order.process", {"id": 7}, app="shop")   # a RunHandle, also a str
    output = handle.result(timeout=60)            # what the workflow function returned
    output = await handle.result_async(timeout=60)
    handle = client.run_handle(run_id)            # a run started elsewhere, maybe long ago

**What a result is.** A run ends with the first `run.completed`, `run.failed` or `run.cancelled`
in its partition of the events topic. `result()` returns the output of `run.completed` (the
JSON value the function returned), raises `RunFailedError` (the error's type, message and
stack) for `run.failed` and `RunCancelledError` (the reason) for `run.cancelled`, and raises
`ResultTimeoutError` (a TimeoutError) when `timeout` seconds pass first. The end is kept: asking
a handle again answers at once. The first end in log order is the result. The fold ranks a
worker's own end above a cancel (seq), so a cancel that races a run's last step leaves
`runs_current` showing `completed` where `result()` raised RunCancelledError: the cancel was
in the log first, and nothing after it in the log tells the two cases apart.

**Where the end is, without missing it.** Every event of a run is keyed by its run id, and the
producers partition by key with the default partitioner (murmur2), so a run's events are on one
partition of the events topic (`RunEndTail.partition_of`), in order.

- A handle made by `client.start` (or `retrigger`) holds a *mark*: an offset of that partition
  taken before the start is sent: its end offset (ListOffsets), or one read less than a second
  ago (any end offset read before the send is at or below every event the run will write; a
  stale one only means reading more), or, while the tail is reading the partition anyway, the
  tail's position there (at or below the end). Every event of the run is written after the
  start is sent, so reading the partition from the mark cannot miss the run's end, however
  late `result()` is called.
- A handle for a run started elsewhere (a trigger, a parent, a retrigger, another process) has
  no mark, and the run may have ended long ago. The processors commit their offsets of the
  events topic only after ClickHouse has the rows of everything below them (docs/processors.md,
  steps 5 to 7), so with C the processors' committed offset of the partition (consumer group
  `Settings.processors_group`) every event below C is in ClickHouse. The handle reads C
  *first*, then asks ClickHouse for the run's end: an end below C is found there; an end at or
  past C is found by reading the partition from C. (In the other order an end could be folded
  and committed between the query and reading C, and be missed by both.) No committed offset
  yet: C is the partition's first offset. The question goes to the `events` table, not
  `runs_current`: the run's own end event holds the output and the error as the worker wrote
  them (`runs_current` may rank a later event above a cancel that was first in the log).

**Where the code is.** This module: `RunHandle`. The tail (`RunEndTail`,
producers/run_end_tail.py) reads the partitions, with the offsets above read by
producers/run_end_offsets.py and the ends recognised and remembered by
producers/run_end_records.py; the ClickHouse lookup is producers/run_end_lookup.py, over the
SQL of projections/queries.py.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from typing import Self

from pydantic import JsonValue

from steplog.producers.run_end_lookup import RunEndLookup, clickhouse_http_lookup
from steplog.producers.run_end_tail import RunEndTail
from steplog.projections.queries import RunEnd

__all__ = [
    "RunEnd",
    "RunEndLookup",
    "RunEndTail",
    "RunHandle",
    "clickhouse_http_lookup",
]


class RunHandle(str):
    """A workflow run the caller can wait for: `result()`, `await result_async()`.

    It is a `str` whose value is the run id, so code written when `client.start` returned the
    run id keeps working unchanged (compare it, hash it, log it, pass it to `client.cancel`,
    put it in JSON); `run_id` gives the plain string. Pickled or copied, it is the plain run
    id. Unlike the `Run` of `client.run(...)`, which instruments a run executing in this
    process, a RunHandle follows a run executing on a worker.
    """

    project: str
    workflow: str | None
    """The run's workflow, when known (it names the run in errors)."""
    _mark: int | None
    _tail: RunEndTail
    _end: RunEnd | None

    def __new__(
        cls, run_id: str, *, project: str, workflow: str | None, mark: int | None,
        tail: RunEndTail,
    ) -> Self:
        handle = super().__new__(cls, run_id)
        handle.project = project
        handle.workflow = workflow
        handle._mark = mark
        handle._tail = tail
        handle._end = None
        return handle

    @property
    def run_id(self) -> str:
        return str(self)

    @property
    def mark(self) -> int | None:
        """Where the run's events begin at the earliest, in their partition of the events
        topic (None: a run started elsewhere; see the module doc)."""
        return self._mark

    def result(self, timeout: float | None = None) -> JsonValue:
        """Wait for the run to end and return its output (the JSON value its function
        returned). Raises RunFailedError, RunCancelledError, or ResultTimeoutError after
        `timeout` seconds (None: no limit). Blocks the calling thread: in asyncio code, use
        `result_async`."""
        if self._end is None:
            future = self._submit_wait(timeout)
            try:
                self._end = future.result()
            except BaseException:
                future.cancel()  # e.g. KeyboardInterrupt: stop waiting on the tail as well
                raise
        return self._end.result()

    async def result_async(self, timeout: float | None = None) -> JsonValue:
        """`result` for asyncio code: the caller's loop only awaits."""
        if self._end is None:
            self._end = await asyncio.wrap_future(self._submit_wait(timeout))
        return self._end.result()

    def _submit_wait(self, timeout: float | None) -> Future[RunEnd]:
        return self._tail.submit_wait(self.run_id, self.project, self.workflow, self._mark,
                                      timeout)

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        return str, (str(self),)

