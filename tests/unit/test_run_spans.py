"""Runs and steps as spans (projections/run_spans.py): the pure mapping, without a collector."""

from __future__ import annotations

from datetime import timedelta

from steplog.projections.run_spans import (
    PartitionSpans,
    SpanRecord,
    SpanStatus,
    run_span_id,
    step_span_id,
    trace_id,
)
from steplog.schemas.events import Event, StepCompleted, StepCompletedPayload, StepStarted
from tests.span_runs import STACK, envelope, ns, retried_run

HOUR = timedelta(hours=1)


def fold(spans: PartitionSpans, events: list[Event], first_offset: int = 0) -> list[SpanRecord]:
    ended: list[SpanRecord] = []
    for offset, event in enumerate(events, first_offset):
        ended += spans.apply(event, offset)
    return ended


def test_a_run_is_a_trace_with_a_span_per_attempt_under_its_root() -> None:
    spans = fold(PartitionSpans(max_open_runs=10, hold=HOUR), retried_run("r1"))

    by_name = {(s.name, s.attributes.get("steplog.attempt")): s for s in spans}
    assert set(by_name) == {("charge", 1), ("charge", 2), ("ship", 1), ("checkout", None)}
    root = by_name["checkout", None]
    assert {s.trace_id for s in spans} == {trace_id("r1")}
    assert root.span_id == run_span_id("r1") and root.parent_span_id is None
    assert (root.start_ns, root.end_ns, root.status) == (ns(0), ns(7), SpanStatus.OK)
    assert root.attributes == {"steplog.project": "shop", "steplog.flow": "checkout",
                               "steplog.run_id": "r1", "steplog.status": "completed"}
    first, second = by_name["charge", 1], by_name["charge", 2]
    assert first.span_id == step_span_id("r1", "charge", 1) != second.span_id
    assert {s.parent_span_id for s in spans if s is not root} == {root.span_id}
    assert (first.start_ns, first.end_ns, first.status) == (ns(1), ns(2), SpanStatus.ERROR)
    assert first.attributes["steplog.status"] == "retrying"
    assert [(e.at_ns, e.type, e.message, e.stacktrace) for e in first.errors] == [
        (ns(2), "TimeoutError", "gateway", STACK)
    ]
    assert (second.start_ns, second.end_ns, second.errors) == (ns(3), ns(4.5), ())
    assert second.attributes["steplog.status"] == "completed"


def test_ids_are_the_same_on_every_read_of_the_log() -> None:
    once = fold(PartitionSpans(max_open_runs=10, hold=HOUR), retried_run("r1"))
    again = fold(PartitionSpans(max_open_runs=10, hold=HOUR), retried_run("r1"))
    assert [(s.trace_id, s.span_id) for s in once] == [(s.trace_id, s.span_id) for s in again]
    assert trace_id("r1") != trace_id("r2")


def test_an_attempt_without_its_start_starts_at_its_end_minus_its_duration() -> None:
    recorded = StepCompleted(**envelope("r1", 9, 0), step_key="email",
                             payload=StepCompletedPayload(duration_ms=250))
    [span] = fold(PartitionSpans(max_open_runs=10, hold=HOUR), [recorded])
    assert (span.start_ns, span.end_ns) == (ns(8.75), ns(9))


def test_an_open_run_holds_the_commit_at_its_first_event_within_the_hold() -> None:
    spans = PartitionSpans(max_open_runs=10, hold=HOUR)
    fold(spans, retried_run("done"), first_offset=0)
    assert spans.hold_position(8) == 8  # nothing open
    spans.apply(StepStarted(**envelope("open", 10, 0), step_key="a"), 8)
    spans.apply(StepStarted(**envelope("later", 11, 0), step_key="a"), 9)
    assert spans.hold_position(10) == 8
    # Two hours on, on the log's time: the open runs no longer hold the commit back.
    spans.apply(StepStarted(**envelope("new", 7200 + 11, 0), step_key="a"), 10)
    assert spans.hold_position(11) == 10


def test_the_oldest_open_run_is_forgotten_beyond_the_bound() -> None:
    spans = PartitionSpans(max_open_runs=2, hold=HOUR)
    for offset, run_id in enumerate(("a", "b", "c")):
        spans.apply(StepStarted(**envelope(run_id, offset, 0), step_key="s"), offset)
    assert (len(spans), spans.forgotten) == (2, 1)
    assert spans.hold_position(3) == 1
