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

**The tail.** One consumer per client, on the client's background loop (`ControlSender.submit`),
serves every handle waiting, so a caller waiting on hundreds of runs costs one consumer: no
consumer group, no commits, every partition assigned and paused. A partition is read (resumed)
while a handle waits on it, and for `_LINGER_S` after the last one is answered, so a caller that
starts and waits in a loop finds its partitions being read and takes its marks without a round
trip. Only records whose value names a run end are decoded, and only when a handle waits on
their key or to remember them: a partition being read keeps its last `_RECENT_ENDS` end events
(`PartitionEnds`), so a handle whose mark is behind the tail's position (the run ended before
`result()` was called; other runs' events were read meanwhile) is answered from memory instead
of reading the partition again. A mark below what the memory covers seeks the partition back to
the mark; the other handles waiting there read a few records twice, which changes nothing.
A partition that starts being read joins at the next fetch: at most `fetch_max_wait_ms`
(`_FETCH_MAX_WAIT_MS`) later.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol, Self, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import JsonValue

from steplog.errors import (
    ClickHouseError,
    InvalidEventError,
    ResultTimeoutError,
    RunCancelledError,
    RunFailedError,
    WorkflowError,
)
from steplog.producers.sender import key_partition
from steplog.schemas.base import ErrorInfo
from steplog.schemas.codec import decode_event
from steplog.schemas.events import RunCancelled, RunCompleted, RunFailed
from steplog.schemas.statuses import RunStatus
from steplog.settings import Settings

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

__all__ = [
    "RUN_END_SQL",
    "PartitionEnds",
    "RunEnd",
    "RunEndLookup",
    "RunEndTail",
    "RunHandle",
    "clickhouse_http_endpoint",
    "clickhouse_http_lookup",
    "decode_run_end",
    "is_run_end",
]

log = logging.getLogger("steplog.client")

T = TypeVar("T")

_END_TYPES: Final = ("run.completed", "run.failed", "run.cancelled")
_END_TAGS: Final = tuple(f'"{t}"'.encode() for t in _END_TYPES)
_RUN_EVENT_TAG: Final = b'"run.'
_LINGER_S: Final = 30.0
_END_CACHE_S: Final = 1.0
_FETCH_MAX_WAIT_MS: Final = 50
_POLL_MS: Final = 500
_RECENT_ENDS: Final = 1024
_RECENT_VALUE_BYTES: Final = 16 * 1024
_READ_RETRY_S: Final = 1.0

RUN_END_SQL: Final = (
    "SELECT type, flow, payload FROM events "
    "WHERE project = {project:String} AND run_id = {run_id:String} "
    "AND type IN ('run.completed', 'run.failed', 'run.cancelled') "
    "ORDER BY log_offset LIMIT 1"
)
"""The run's first end event in the `events` table (why not `runs_current`: module doc)."""


# --------------------------------------------------------------------------- the end of a run


@dataclass(frozen=True)
class RunEnd:
    """How a run ended: its first run.completed, run.failed or run.cancelled."""

    run_id: str
    project: str
    workflow: str
    status: RunStatus
    """COMPLETED, FAILED or CANCELLED."""
    output: JsonValue = None
    error: ErrorInfo | None = None
    reason: str | None = None

    @classmethod
    def from_event(cls, event: RunCompleted | RunFailed | RunCancelled) -> RunEnd:
        ended = cls(event.run_id, event.project, event.flow, RunStatus.COMPLETED)
        if isinstance(event, RunCompleted):
            return dataclasses.replace(ended, output=event.payload.output)
        if isinstance(event, RunFailed):
            return dataclasses.replace(ended, status=RunStatus.FAILED, error=event.payload.error)
        return dataclasses.replace(ended, status=RunStatus.CANCELLED, reason=event.payload.reason)

    @classmethod
    def from_row(
        cls, run_id: str, project: str, workflow: str, event_type: str, payload: str
    ) -> RunEnd:
        """From a row of RUN_END_SQL: the event's type and its payload as JSON text."""
        document: Any = json.loads(payload) if payload else {}
        ended = cls(run_id, project, workflow, RunStatus.COMPLETED)
        if event_type == "run.completed":
            return dataclasses.replace(ended, output=document.get("output"))
        if event_type == "run.failed":
            error = ErrorInfo.model_validate(document["error"])
            return dataclasses.replace(ended, status=RunStatus.FAILED, error=error)
        if event_type == "run.cancelled":
            return dataclasses.replace(
                ended, status=RunStatus.CANCELLED, reason=document.get("reason")
            )
        raise ValueError(f"{event_type!r} is not a run's end; expected one of {_END_TYPES}")

    def result(self) -> JsonValue:
        """The run's output, or the exception that says why there is none."""
        if self.status is RunStatus.COMPLETED:
            return self.output
        if self.status is RunStatus.FAILED:
            error = self.error or ErrorInfo(type="Error", message="")
            raise RunFailedError(
                self.run_id, self.workflow, error.type, error.message, error.stack
            )
        raise RunCancelledError(self.run_id, self.workflow, self.reason)


def is_run_end(value: bytes) -> bool:
    """Whether an encoded event may be a run's end (cheap; decoding decides)."""
    return _RUN_EVENT_TAG in value and any(tag in value for tag in _END_TAGS)


def decode_run_end(value: bytes, *, max_bytes: int) -> RunEnd | None:
    """The run end encoded in `value`, or None when it is none (or not a valid event)."""
    try:
        event = decode_event(value, max_bytes=max(max_bytes, len(value)))
    except InvalidEventError:
        return None  # the processors dead-letter it; it ends nothing
    if isinstance(event, RunCompleted | RunFailed | RunCancelled):
        return RunEnd.from_event(event)
    return None


RunEndLookup = Callable[[str, str], RunEnd | None]
"""`lookup(run_id, project)`: the run's end as ClickHouse has it, or None. Blocking (it runs
in a worker thread); raises ClickHouseError when ClickHouse cannot be asked."""


def clickhouse_http_lookup(settings: Settings, *, timeout: float = 10.0) -> RunEndLookup:
    """A RunEndLookup over ClickHouse's HTTP interface, with the standard library only (the
    SDK does not depend on clickhouse-connect): the server of STEPLOG_CLICKHOUSE_DSN, or, for
    the embedded engine, the stack's SQL endpoint on 127.0.0.1:STEPLOG_SQL_PORT."""
    url, headers = clickhouse_http_endpoint(settings.clickhouse_dsn, settings.sql_port)
    database = settings.clickhouse_database

    def lookup(run_id: str, project: str) -> RunEnd | None:
        # Imported here: urllib.request costs the SDK's import (http.client, email) otherwise.
        import urllib.error
        import urllib.request

        query = urllib.parse.urlencode({
            "database": database,
            "param_project": project,
            "param_run_id": run_id,
            "query": f"{RUN_END_SQL} FORMAT JSONEachRow",
        })
        request = urllib.request.Request(f"{url}?{query}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body: bytes = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace").strip()
            raise ClickHouseError(
                f"cannot look up the end of run {run_id} at {url} (database {database!r}): "
                f"HTTP {exc.code}: {detail[:500]}"
            ) from None
        except OSError as exc:
            raise ClickHouseError(
                f"cannot look up the end of run {run_id}: ClickHouse at {url} does not answer "
                f"({exc}); is the stack running (STEPLOG_SQL_PORT, STEPLOG_CLICKHOUSE_DSN)?"
            ) from None
        lines = body.splitlines()
        if not lines:
            return None
        row = json.loads(lines[0])
        return RunEnd.from_row(run_id, project, row["flow"], row["type"], row["payload"])

    return lookup


def clickhouse_http_endpoint(dsn: str, sql_port: int) -> tuple[str, dict[str, str]]:
    """The URL of ClickHouse's HTTP interface for a DSN, and the headers that log in."""
    parsed = urllib.parse.urlparse(dsn)
    if parsed.scheme not in ("http", "https"):  # the embedded engine: the stack serves it
        return f"http://127.0.0.1:{sql_port}/", {}
    port = parsed.port or (8443 if parsed.scheme == "https" else 8123)
    headers = {}
    if parsed.username:
        headers["X-ClickHouse-User"] = urllib.parse.unquote(parsed.username)
    if parsed.password:
        headers["X-ClickHouse-Key"] = urllib.parse.unquote(parsed.password)
    return f"{parsed.scheme}://{parsed.hostname}:{port}/", headers


# --------------------------------------------------------------------------- the handle


class CoroutineRunner(Protocol):
    """Where the tail's coroutines run (the client's ControlSender)."""

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]: ...


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


# --------------------------------------------------------------------------- the tail


@dataclass
class PartitionEnds:
    """The run ends read from one partition since `covered_from`: every end event at an offset
    in [covered_from, what was read) is here, the newest `limit` of them (forgetting one moves
    `covered_from` past it). Values over `max_value_bytes` are not kept: the offset says where
    to read it again."""

    covered_from: int
    limit: int = _RECENT_ENDS
    max_value_bytes: int = _RECENT_VALUE_BYTES
    _order: deque[tuple[int, bytes]] = field(default_factory=deque)
    _by_key: dict[bytes, list[tuple[int, bytes | None]]] = field(default_factory=dict)
    _last: int = -1

    def covers(self, offset: int) -> bool:
        """Whether every end at or past `offset` read so far is here."""
        return offset >= self.covered_from

    def add(self, offset: int, key: bytes, value: bytes) -> None:
        if offset <= self._last or offset < self.covered_from:
            return  # read again after a seek back: already here
        self._last = offset
        kept = value if len(value) <= self.max_value_bytes else None
        self._by_key.setdefault(key, []).append((offset, kept))
        self._order.append((offset, key))
        while len(self._order) > self.limit:
            oldest, oldest_key = self._order.popleft()
            ends = self._by_key[oldest_key]
            ends.pop(0)
            if not ends:
                del self._by_key[oldest_key]
            self.covered_from = oldest + 1

    def find(self, key: bytes, start: int) -> list[tuple[int, bytes | None]]:
        """The ends of run `key` at or past `start`, oldest first (offset, value or None)."""
        return [(offset, value) for offset, value in self._by_key.get(key, ()) if offset >= start]


@dataclass(eq=False)
class _Waiter:
    key: bytes
    project: str
    start: int
    future: asyncio.Future[RunEnd]


@dataclass
class _PartitionState:
    reading: bool = False
    ends: PartitionEnds = field(default_factory=lambda: PartitionEnds(0))
    waiting: int = 0
    idle_since: float = 0.0


class RunEndTail:
    """Reads the events topic for the ends of the runs that handles wait for (module doc).

    Every method runs on the client's background loop; a forked child (a new loop) starts
    afresh.
    """

    def __init__(
        self,
        runner: CoroutineRunner,
        bootstrap: str,
        topic: str,
        *,
        processors_group: str,
        max_event_bytes: int,
        lookup: RunEndLookup,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.processors_group = processors_group
        self.max_event_bytes = max_event_bytes
        self._runner = runner
        self._lookup = lookup
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reset()

    def _reset(self) -> None:
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._partitions: list[int] = []
        self._states: dict[int, _PartitionState] = {}
        self._waiters: dict[bytes, list[_Waiter]] = {}
        self._known_ends: dict[int, tuple[float, int]] = {}
        self._end_queries: dict[int, asyncio.Task[int]] = {}
        self._starting: asyncio.Lock | None = None
        self._wake: asyncio.Event | None = None
        self._reader: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------ from any thread

    def submit_wait(
        self, run_id: str, project: str, workflow: str | None, mark: int | None,
        timeout: float | None,
    ) -> Future[RunEnd]:
        """`wait` on the tail's loop, given up (ResultTimeoutError) after `timeout` seconds."""
        return self._runner.submit(self._wait_at_most(run_id, project, workflow, mark, timeout))

    def close(self, timeout: float = 30.0) -> None:
        """Stop reading (from any thread); handles still waiting get a WorkflowError."""
        if self._loop is not None:
            self._runner.submit(self._close()).result(timeout)

    # ------------------------------------------------------------------------ on the tail's loop

    def partition_of(self, run_id: str) -> int:
        """The partition of the events topic holding the run's events (the producers' default
        partitioner: murmur2 of the key, over every partition)."""
        return key_partition(run_id.encode(), self._partitions)

    async def mark(self, run_id: str) -> int:
        """An offset at or below every event the run will write from now on (module doc).
        Call it before sending what starts the run."""
        consumer = await self._ready()
        partition = self.partition_of(run_id)
        tp = TopicPartition(self.topic, partition)
        if self._states[partition].reading:
            position: int = await consumer.position(tp)
            return position
        known = self._known_ends.get(partition)
        if known is not None and time.monotonic() - known[0] <= _END_CACHE_S:
            return known[1]
        # Starts asked for at once share one ListOffsets: its answer, whenever it was asked,
        # comes before any of their sends.
        query = self._end_queries.get(partition)
        if query is None:
            query = asyncio.create_task(self._query_end(tp))
            self._end_queries[partition] = query
        return await asyncio.shield(query)

    async def wait(self, run_id: str, project: str, mark: int | None) -> RunEnd:
        """The run's end: read from `mark`, or, with no mark, looked up (module doc)."""
        await self._ready()
        partition = self.partition_of(run_id)
        if mark is None:
            committed = await self._committed(partition)  # first: see the module doc
            found = await asyncio.to_thread(self._lookup, run_id, project)
            if found is not None:
                return found
            mark = committed
        waiter = _Waiter(
            run_id.encode(), project, mark, asyncio.get_running_loop().create_future()
        )
        self._add(partition, waiter)
        try:
            return await waiter.future
        finally:
            self._remove(partition, waiter)

    async def _wait_at_most(
        self, run_id: str, project: str, workflow: str | None, mark: int | None,
        timeout: float | None,
    ) -> RunEnd:
        try:
            async with asyncio.timeout(timeout) as deadline:
                return await self.wait(run_id, project, mark)
        except TimeoutError:
            if deadline.expired():
                raise ResultTimeoutError(run_id, workflow, timeout or 0.0) from None
            raise

    async def _close(self) -> None:
        if self._loop is not asyncio.get_running_loop():
            return  # nothing started on this loop (or a forked child's copy)
        reader, consumer, admin = self._reader, self._consumer, self._admin
        waiters = [w for ws in self._waiters.values() for w in ws]
        self._reset()
        self._loop = None
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(WorkflowError("the client was closed"))
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()

    # ------------------------------------------------------------------------ mechanics

    async def _ready(self) -> AIOKafkaConsumer:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._reset()  # first use, or a new loop (after a fork, or a close)
            self._loop = loop
            self._starting = asyncio.Lock()
            self._wake = asyncio.Event()
        if self._consumer is not None:
            return self._consumer
        assert self._starting is not None
        async with self._starting:  # concurrent first calls start one consumer
            if self._consumer is None:
                await self._start()
        assert self._consumer is not None
        return self._consumer

    async def _start(self) -> None:
        from steplog.topics import topic_partitions

        partitions = await topic_partitions(self.bootstrap, self.topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="steplog-client-results",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
            max_partition_fetch_bytes=max(self.max_event_bytes, 1024 * 1024),
        )
        await consumer.start()
        try:
            assigned = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(assigned)
            consumer.pause(*assigned)
        except BaseException:
            await consumer.stop()
            raise
        self._partitions = partitions
        self._states = {p: _PartitionState() for p in partitions}
        self._consumer = consumer
        self._reader = asyncio.create_task(self._read(consumer), name="steplog run ends")

    async def _query_end(self, tp: TopicPartition) -> int:
        assert self._consumer is not None
        try:
            ends: dict[TopicPartition, int] = await self._consumer.end_offsets([tp])
            self._known_ends[tp.partition] = (time.monotonic(), ends[tp])
            return ends[tp]
        finally:
            self._end_queries.pop(tp.partition, None)

    async def _committed(self, partition: int) -> int:
        """The processors' committed offset of the partition; its first offset when none."""
        from aiokafka.admin import AIOKafkaAdminClient

        if self._admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            self._admin = admin
        tp = TopicPartition(self.topic, partition)
        offsets = await self._admin.list_consumer_group_offsets(
            self.processors_group, partitions=[tp]
        )
        committed = offsets.get(tp)
        if committed is not None and committed.offset >= 0:
            return int(committed.offset)
        assert self._consumer is not None
        first: dict[TopicPartition, int] = await self._consumer.beginning_offsets([tp])
        return first[tp]

    def _add(self, partition: int, waiter: _Waiter) -> None:
        # No await in here: the reader cannot read anything between the check and the
        # registration.
        state = self._states[partition]
        self._waiters.setdefault(waiter.key, []).append(waiter)
        state.waiting += 1
        if not state.reading:
            self._read_from(partition, waiter.start)
            state.reading = True
            assert self._consumer is not None and self._wake is not None
            self._consumer.resume(TopicPartition(self.topic, partition))
            self._wake.set()
            return
        if not state.ends.covers(waiter.start):
            self._read_from(partition, waiter.start)  # the mark is older than the memory
            return
        for offset, value in state.ends.find(waiter.key, waiter.start):
            if value is None:  # too large to keep: read it again
                assert self._consumer is not None
                self._consumer.seek(TopicPartition(self.topic, partition), offset)
                return
            self._resolve([waiter], offset, value)
            if waiter.future.done():
                return

    def _read_from(self, partition: int, offset: int) -> None:
        assert self._consumer is not None
        self._consumer.seek(TopicPartition(self.topic, partition), offset)
        self._states[partition].ends = PartitionEnds(offset)

    def _remove(self, partition: int, waiter: _Waiter) -> None:
        waiters = self._waiters.get(waiter.key, [])
        if waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[waiter.key]
            state = self._states.get(partition)
            if state is not None:
                state.waiting -= 1
                if state.waiting == 0:
                    state.idle_since = time.monotonic()

    def _resolve(self, waiters: list[_Waiter], offset: int, value: bytes) -> None:
        ended = decode_run_end(value, max_bytes=self.max_event_bytes)
        if ended is None:
            return
        for waiter in waiters:
            if (
                not waiter.future.done()
                and waiter.start <= offset
                and waiter.project == ended.project
            ):
                waiter.future.set_result(ended)

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await self._read_forever(consumer)
        except BaseException as exc:  # a bug, or closing: nobody must wait for ever
            self._fail_waiting(exc)
            raise

    async def _read_forever(self, consumer: AIOKafkaConsumer) -> None:
        assert self._wake is not None
        wake = self._wake
        while True:
            if not any(state.reading for state in self._states.values()):
                wake.clear()
                await wake.wait()
                continue
            try:
                batches: dict[TopicPartition, list[Any]] = await consumer.getmany(
                    timeout_ms=_POLL_MS
                )
            except KafkaError as exc:  # the consumer retries what it can; this it could not
                log.warning("reading %s for run ends failed: %r", self.topic, exc)
                self._fail_waiting(exc)
                await asyncio.sleep(_READ_RETRY_S)
                continue
            for tp, records in batches.items():
                state = self._states[tp.partition]
                if not state.reading:
                    continue
                for record in records:
                    value: bytes | None = record.value
                    if value is None or not is_run_end(value):
                        continue
                    key: bytes = record.key or b""
                    state.ends.add(record.offset, key, value)
                    waiters = self._waiters.get(key)
                    if waiters:
                        self._resolve(waiters, record.offset, value)
            self._stop_idle(consumer)

    def _stop_idle(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        for partition, state in self._states.items():
            if state.reading and state.waiting == 0 and now - state.idle_since > _LINGER_S:
                consumer.pause(TopicPartition(self.topic, partition))
                state.reading = False
                state.ends = PartitionEnds(0)

    def _fail_waiting(self, exc: BaseException) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(
                        WorkflowError(f"reading {self.topic!r} for the end of a run failed: "
                                      f"{exc!r}")
                    )
