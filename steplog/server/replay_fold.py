"""Replay's folding side: child processes that each fold a share of the events topic's
partitions and send the projection rows to the parent, which inserts them (steplog/server/replay.py).

Why processes: the fold is pure Python and runs on one core; folding in one process while
another inserts, and folding several partitions' shares at once, is what lets a replay use the
machine. A run's events all live in one partition (the message key is the run id), so a share
of partitions is a share of runs, folded exactly as the processors fold them; the projection
tables replace rows by key and version, so the order in which the shares' rows land does not
matter.

Where signatures are enforced, a child is handed the whole keys topic as it was when the replay
began (`FoldShare.keys`) and refuses (counts as invalid) the events and flow definitions that
fail the record checks, as the processors dead-lettered them (processors/record_checks.py).

Each child reads the flows topic first (the flow graphs the fold needs); only the first child
sends the `flows` rows. It then sends one message per batch of `BATCH_EVENTS` records read. The
parent takes one message at a time and inserts its rows before it takes the next, so a send
waits for as long as the parent inserts another child's rows: a thread of the child's
(`_Handover`) does the sending, and the fold goes on meanwhile, at most one batch ahead of the
one waiting. Messages, as tuples: `("rows", table rows, records read)`, then
`("done", FoldCounts)`, or `("error", message)`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Collection
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Final

from steplog.server.child_process import settle_child
from steplog.errors import InvalidEventError
from steplog.processors.batch_fold import FoldedBatch, HeldRunStates, decode_run_event
from steplog.processors.fold.state_retention import StateRetention
from steplog.processors.held_states import HeldStates
from steplog.processors.projection_batch import ProjectionBatch
from steplog.processors.record_checks import KnownKeys, check_signed_record
from steplog.projections.log_reader import LogRecord, read_log
from steplog.schemas.codec import decode_flows_message
from steplog.schemas.flows import FlowDefinition, WorkflowDefinition
from steplog.schemas.keys import KeyRecord

__all__ = ["BATCH_EVENTS", "FoldCounts", "FoldShare", "fold_share", "shares"]

BATCH_EVENTS: Final = 20_000
"""Records per message to the parent: an insert per table each, so not too few."""


@dataclass(frozen=True)
class FoldShare:
    """What one child folds."""

    bootstrap: str
    events_topic: str
    flows_topic: str
    max_event_bytes: int
    partitions: tuple[int, ...]
    """Of the events topic."""
    state_memory_bytes: int
    """Memory for the run states between batches (the rest go to disk: HeldStates)."""
    sends_flows: bool
    """This child sends the `flows` rows (one child does)."""
    keys: tuple[KeyRecord, ...] | None = None
    """Every key record, to check signed records against; None: signatures not enforced."""
    state_retention: StateRetention | None = None
    """The processors' (STEPLOG_STATE_RETENTION): the same events are refused `run closed`."""

    def checks(self) -> KnownKeys | None:
        return KnownKeys(self.keys) if self.keys is not None else None


@dataclass
class FoldCounts:
    events: int = 0
    invalid: int = 0
    runs: int = 0
    flows: int = 0
    """Flow definitions (counted by the child that sends them)."""

    def add(self, other: FoldCounts) -> None:
        self.events += other.events
        self.invalid += other.invalid
        self.runs += other.runs
        self.flows += other.flows


def fold_share(conn: Connection, share: FoldShare, parent: int) -> None:
    """The child's entry point (multiprocessing "spawn" target)."""
    settle_child(parent)
    handover = _Handover(conn)
    try:
        counts = asyncio.run(_fold(handover, share))
        handover.close()  # every batch sent before the counts
    except Exception as exc:  # the parent reports it and stops the other children
        handover.close(raising=False)
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("done", counts))


class _Handover:
    """Sends the rows messages to the parent from a thread, in order, one waiting at most."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._waiting: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="replay-handover", daemon=True)
        self._thread.start()

    def send(self, message: tuple[Any, ...]) -> None:
        """Queue a message; blocks while the previous one still waits for the parent."""
        if self._error is not None:
            raise self._error
        self._waiting.put(message)

    def close(self, *, raising: bool = True) -> None:
        """Wait until every queued message is sent (or failed)."""
        self._waiting.put(None)
        self._thread.join()
        if raising and self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (message := self._waiting.get()) is not None:
            if self._error is not None:
                continue  # drained, so that send() and close() never wait on a dead thread
            try:
                self._conn.send(message)
            except Exception as exc:  # the parent is gone: the fold stops at its next send
                self._error = exc


async def _fold(handover: _Handover, share: FoldShare) -> FoldCounts:
    counts = FoldCounts()
    projection = ProjectionBatch()
    flows, flow_records = await _read_flows(
        share, projection if share.sends_flows else None, counts
    )
    # Every run's state between batches as its changelog bytes, as the processors hold them
    # (a fifth of the memory of the objects, and beyond the budget on disk: a log of millions
    # of runs needs both); the batch in hand's runs are objects in `folded`.
    held = HeldStates(share.state_memory_bytes, share.state_retention)
    held.hold(share.partitions)
    runs = HeldRunStates(held)
    folded = FoldedBatch(flows, runs.get, projection, admission=runs.admission)
    pending = flow_records if share.sends_flows else 0  # the progress bar counts them once

    def send_batch() -> None:
        nonlocal folded, pending
        folded.add_run_rows()
        runs.keep(folded)
        handover.send(("rows", folded.projection.table_rows(), pending))
        folded, pending = FoldedBatch(flows, runs.get, admission=runs.admission), 0

    keys = share.checks()
    async for record in read_log(share.bootstrap, share.events_topic, partitions=share.partitions):
        pending += 1
        try:
            event = decode_run_event(record.key, record.value, share.max_event_bytes)
            if keys is not None:
                _check(record, share.events_topic, event.project, keys)
            # Rows only: the engine effects (commands, timers, events for other runs) were
            # carried out when the events were first folded; a rebuild must never start, resume
            # or cancel. RunClosedError as the processors' (processors/run_retention.py).
            folded.fold(event, record.partition, record.offset, record.timestamp_ms)
        except InvalidEventError:
            counts.invalid += 1
            continue
        counts.events += 1
        if pending >= BATCH_EVENTS:
            send_batch()
    send_batch()
    counts.runs = len(held)
    held.close()
    return counts


async def _read_flows(
    share: FoldShare, batch: ProjectionBatch | None, counts: FoldCounts
) -> tuple[dict[str, FlowDefinition], int]:
    """The newest definition of every flow, and the records read; the flows' rows into
    `batch` (and their counts into `counts`) if this child sends them."""
    flows: dict[str, FlowDefinition] = {}
    records = 0
    keys = share.checks()
    async for record in read_log(share.bootstrap, share.flows_topic):
        records += 1
        try:
            definition = decode_flows_message(record.value, max_bytes=share.max_event_bytes)
            if keys is not None:
                _check(record, share.flows_topic, definition.project, keys)
        except InvalidEventError:
            if batch is not None:
                counts.invalid += 1
            continue
        if isinstance(definition, WorkflowDefinition):
            continue  # the registry's, not a projection's (the processors skip them too)
        held = flows.get(definition.key)
        if held is None or held.ts <= definition.ts:
            flows[definition.key] = definition
        if batch is not None:
            batch.add_flow(definition)
    if batch is not None:
        counts.flows = len(flows)
    return flows, records


def _check(record: LogRecord, topic: str, project: str, keys: KnownKeys) -> None:
    """The processors' record checks of a record of the log (InvalidEventError)."""
    check_signed_record(
        topic, record.value or b"", record.headers, record.timestamp_ms, project, keys
    )


def shares(partitions: Collection[int], processes: int) -> list[tuple[int, ...]]:
    """`partitions` dealt round-robin into at most `processes` non-empty shares."""
    ordered = sorted(partitions)
    count = max(1, min(processes, len(ordered)))
    return [tuple(ordered[i::count]) for i in range(count)]
