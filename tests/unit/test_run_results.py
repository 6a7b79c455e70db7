"""The pure parts of run results: reading a run's end, remembering ends, the handle as a str.

The tail itself (Kafka) and the ClickHouse look-up are proven end to end in
tests/integration/test_run_results.py.
"""

from __future__ import annotations

import copy
import json
import pickle
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any, cast

import pytest

import steplog
from steplog.errors import (
    ResultTimeoutError,
    RunCancelledError,
    RunExpiredError,
    RunFailedError,
    SteplogError,
    WorkflowError,
)
from steplog.producers.run_end_lookup import clickhouse_http_endpoint
from steplog.producers.run_end_records import PartitionEnds, decode_run_end, is_run_end
from steplog.producers.run_end_tail import RunEndTail
from steplog.producers.run_results import RunHandle
from steplog.projections.queries import RunEnd
from steplog.schemas.base import ErrorInfo
from steplog.schemas.codec import encode
from steplog.schemas.events import (
    RunCancelled,
    RunCancelledPayload,
    RunCompleted,
    RunCompletedPayload,
    RunFailed,
    RunFailedPayload,
    RunStarted,
    StepCompleted,
    StepCompletedPayload,
)
from steplog.schemas.statuses import RunStatus

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
ENVELOPE: dict[str, Any] = {
    "event_id": "e-1", "project": "shop", "flow": "order.process", "run_id": "run-1",
    "ts": NOW, "seq": 7,
}


def completed(output: Any) -> RunCompleted:
    return RunCompleted(**ENVELOPE, payload=RunCompletedPayload(output=output))


def failed() -> RunFailed:
    error = ErrorInfo(type="StepFailedError", message="card declined", stack="Traceback ...")
    return RunFailed(**ENVELOPE, payload=RunFailedPayload(error=error))


def cancelled(reason: str | None, *, expired: bool = False) -> RunCancelled:
    return RunCancelled(**ENVELOPE, payload=RunCancelledPayload(reason=reason, expired=expired))


# --------------------------------------------------------------------------- a run's end


def test_a_completed_run_gives_its_output() -> None:
    ended = RunEnd.from_event(completed({"order": 7, "lines": [1, 2]}))
    assert (ended.status, ended.run_id, ended.workflow) == (
        RunStatus.COMPLETED, "run-1", "order.process"
    )
    assert ended.result() == {"order": 7, "lines": [1, 2]}


def test_a_completed_run_that_returned_nothing_gives_none() -> None:
    assert RunEnd.from_event(completed(None)).result() is None


def test_a_failed_run_raises_with_the_error_type_message_and_stack() -> None:
    with pytest.raises(RunFailedError) as raised:
        RunEnd.from_event(failed()).result()
    error = raised.value
    assert (error.run_id, error.workflow) == ("run-1", "order.process")
    assert (error.error_type, error.error_message) == ("StepFailedError", "card declined")
    assert error.error_stack == "Traceback ..."
    assert str(error) == (
        "run run-1 of workflow 'order.process' failed: StepFailedError: card declined"
    )
    assert isinstance(error, WorkflowError) and isinstance(error, SteplogError)


def test_a_cancelled_run_raises_with_its_reason() -> None:
    with pytest.raises(RunCancelledError, match="was cancelled: customer asked") as raised:
        RunEnd.from_event(cancelled("customer asked")).result()
    assert raised.value.reason == "customer asked"
    with pytest.raises(RunCancelledError, match=r"cancelled \(no reason recorded\)"):
        RunEnd.from_event(cancelled(None)).result()


def test_an_expired_run_raises_that_it_expired_a_kind_of_cancel() -> None:
    ended = RunEnd.from_event(cancelled("started 3h late", expired=True))
    assert ended.status is RunStatus.EXPIRED
    with pytest.raises(RunExpiredError, match="expired: started 3h late") as raised:
        ended.result()
    assert isinstance(raised.value, RunCancelledError)


def test_the_timeout_error_is_a_timeout_error_naming_the_run() -> None:
    error = ResultTimeoutError("run-1", "order.process", 2.5)
    assert isinstance(error, TimeoutError) and isinstance(error, WorkflowError)
    assert "run run-1 of workflow 'order.process' has not ended within 2.5s" in str(error)


@pytest.mark.parametrize(
    "event", [completed({"a": [1, None, "x"]}), failed(), cancelled("stop"),
              cancelled("late", expired=True)],
    ids=["completed", "failed", "cancelled", "expired"],
)
def test_an_end_read_from_clickhouse_equals_the_end_read_from_the_log(event: Any) -> None:
    # The events table keeps each event's payload as JSON text (RUN_END_SQL's row).
    from_row = RunEnd.from_row(
        "run-1", "shop", "order.process", event.type, event.payload.model_dump_json()
    )
    assert from_row == RunEnd.from_event(event)


def test_a_row_that_is_no_end_is_refused() -> None:
    with pytest.raises(ValueError, match="'run.started' is not a run's end"):
        RunEnd.from_row("run-1", "shop", "flow", "run.started", "{}")


def test_only_end_events_are_decoded_as_ends() -> None:
    for event in (completed(1), failed(), cancelled(None)):
        value = encode(event)
        assert is_run_end(value)
        assert decode_run_end(value, max_bytes=1024) == RunEnd.from_event(event)
    started = encode(RunStarted(**ENVELOPE))
    assert not is_run_end(started) and decode_run_end(started, max_bytes=1024) is None
    # A step whose output mentions an end passes the cheap test; decoding says no.
    step = encode(StepCompleted(
        **ENVELOPE, step_key="s", payload=StepCompletedPayload(output={"run.completed": True})
    ))
    assert is_run_end(step) and decode_run_end(step, max_bytes=1024) is None
    assert decode_run_end(b'{"type": "run.completed", "broken', max_bytes=1024) is None


# --------------------------------------------------------------------------- a partition's memory


def test_a_partition_remembers_the_ends_it_read_from_where_it_started() -> None:
    ends = PartitionEnds(100)
    ends.add(104, b"a", b"end of a")
    ends.add(107, b"b", b"end of b")
    assert ends.covers(100) and ends.covers(150) and not ends.covers(99)
    assert ends.find(b"a", 100) == [(104, b"end of a")]
    assert ends.find(b"a", 105) == []  # a handle marked after a's end: not a's end for it
    assert ends.find(b"c", 100) == []


def test_reading_again_after_a_seek_back_adds_nothing_twice() -> None:
    ends = PartitionEnds(0)
    ends.add(5, b"a", b"x")
    ends.add(9, b"b", b"y")
    ends.add(5, b"a", b"x")  # read again
    ends.add(9, b"b", b"y")
    assert ends.find(b"a", 0) == [(5, b"x")] and ends.find(b"b", 0) == [(9, b"y")]


def test_forgetting_the_oldest_end_moves_what_is_covered_past_it() -> None:
    ends = PartitionEnds(0, limit=2)
    ends.add(3, b"a", b"x")
    ends.add(4, b"b", b"y")
    ends.add(8, b"c", b"z")
    assert ends.covered_from == 4 and not ends.covers(3) and ends.covers(4)
    assert ends.find(b"a", 0) == [] and ends.find(b"c", 4) == [(8, b"z")]


def test_a_large_end_is_remembered_by_its_offset_only() -> None:
    ends = PartitionEnds(0, max_value_bytes=4)
    ends.add(3, b"a", b"12345")
    assert ends.find(b"a", 0) == [(3, None)]


# --------------------------------------------------------------------------- the handle


class DoneTail:
    """Answers every wait with one end, counting the waits."""

    def __init__(self, ended: RunEnd) -> None:
        self.ended = ended
        self.waits: list[tuple[str, str, str | None, int | None, float | None]] = []

    def submit_wait(
        self, run_id: str, project: str, workflow: str | None, mark: int | None,
        timeout: float | None,
    ) -> Future[RunEnd]:
        self.waits.append((run_id, project, workflow, mark, timeout))
        future: Future[RunEnd] = Future()
        future.set_result(self.ended)
        return future


def handle_on(tail: DoneTail, run_id: str = "run-1") -> RunHandle:
    return RunHandle(
        run_id, project="shop", workflow="order.process", mark=42, tail=cast(RunEndTail, tail)
    )


def test_a_handle_is_the_run_id_for_code_that_expects_one() -> None:
    handle = handle_on(DoneTail(RunEnd.from_event(completed(1))))
    assert isinstance(handle, str) and handle == "run-1" and hash(handle) == hash("run-1")
    by_id: dict[str, int] = {handle: 1}
    assert by_id["run-1"] == 1 and f"{handle}" == "run-1" and handle.upper() == "RUN-1"
    assert json.dumps({"run": handle}) == '{"run": "run-1"}'
    assert type(handle.run_id) is str and handle.run_id == "run-1"
    assert (handle.project, handle.workflow, handle.mark) == ("shop", "order.process", 42)


def test_a_handle_pickled_or_copied_is_the_plain_run_id() -> None:
    handle = handle_on(DoneTail(RunEnd.from_event(completed(1))))
    for copied in (pickle.loads(pickle.dumps(handle)), copy.copy(handle), copy.deepcopy(handle)):
        assert type(copied) is str and copied == "run-1"


def test_a_handle_asks_once_and_keeps_the_end() -> None:
    tail = DoneTail(RunEnd.from_event(completed({"ok": True})))
    handle = handle_on(tail)
    assert handle.result(timeout=5) == {"ok": True}
    assert handle.result() == {"ok": True}
    assert tail.waits == [("run-1", "shop", "order.process", 42, 5)]


def test_a_handle_of_a_failed_run_raises_every_time_it_is_asked() -> None:
    tail = DoneTail(RunEnd.from_event(failed()))
    handle = handle_on(tail)
    for _ in range(2):
        with pytest.raises(RunFailedError, match="StepFailedError: card declined"):
            handle.result()
    assert len(tail.waits) == 1


def test_result_async_answers_like_result() -> None:
    import asyncio

    handle = handle_on(DoneTail(RunEnd.from_event(completed([1, 2]))))
    assert asyncio.run(handle.result_async(timeout=1)) == [1, 2]


def test_the_handle_and_its_errors_are_exported() -> None:
    for name in ("RunHandle", "RunFailedError", "RunCancelledError", "ResultTimeoutError"):
        assert name in steplog.__all__ and getattr(steplog, name) is not None
    assert steplog.RunHandle is RunHandle


# --------------------------------------------------------------------------- where ClickHouse is


def test_the_embedded_engine_is_asked_through_the_stacks_sql_endpoint() -> None:
    assert clickhouse_http_endpoint("chdb:///var/lib/steplog/clickhouse", 8124) == (
        "http://127.0.0.1:8124/", {}
    )


def test_a_server_is_asked_at_its_address_with_its_login() -> None:
    assert clickhouse_http_endpoint("https://an%40alyst:p%2Fw@ch.internal:9443", 8123) == (
        "https://ch.internal:9443/", {"X-ClickHouse-User": "an@alyst", "X-ClickHouse-Key": "p/w"}
    )
    assert clickhouse_http_endpoint("http://clickhouse", 8123) == ("http://clickhouse:8123/", {})
