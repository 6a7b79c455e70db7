"""The metrics' pure parts: the SDK sender collector, bounded labels, and what a batch of the
events topic counts (runs started and ended, steps ended, events folded), on the real fold. The
processes' endpoints are tested on the real stack (tests/integration/test_metrics.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from prometheus_client import CollectorRegistry

from steplog.metrics import OTHER, BoundedLabels, Metrics, metrics, register_sender, reset
from steplog.processors.batch_fold import FoldedBatch
from steplog.processors.batch_metrics import BatchMetrics, RunLabels
from steplog.processors.fold.state import RunState
from steplog.producers.send_buffer import SenderStats
from steplog.schemas.events import Event
from tests.unit.test_fold import Run


class FixedStats:
    def __init__(self, **counts: int) -> None:
        self.counts = SenderStats(**{"sent": 0, "retried": 0, "dropped": 0, "failed": 0,
                                     "buffered": 0, "buffered_bytes": 0, **counts})

    def stats(self) -> SenderStats:
        return self.counts


def test_registered_senders_are_read_at_each_scrape_one_series_each() -> None:
    registry = CollectorRegistry()
    client = FixedStats(sent=7, retried=2, dropped=1, failed=3, buffered_bytes=512, spooled=40,
                        spool_bytes=4096)
    register_sender(client, registry)
    register_sender(FixedStats(sent=1), registry, name="audit")

    def value(name: str, sender: str = "default") -> float | None:
        return registry.get_sample_value(name, {"sender": sender})

    assert value("steplog_sdk_events_sent_total") == 7
    assert value("steplog_sdk_events_retried_total") == 2
    assert value("steplog_sdk_events_dropped_total") == 1
    assert value("steplog_sdk_events_failed_total") == 3
    assert value("steplog_sdk_buffer_bytes") == 512
    assert value("steplog_sdk_events_spooled_total") == 40
    assert value("steplog_sdk_spool_bytes") == 4096
    assert value("steplog_sdk_events_sent_total", "audit") == 1
    client.counts = client.counts.model_copy(update={"sent": 9})
    assert value("steplog_sdk_events_sent_total") == 9
    with pytest.raises(ValueError, match="'audit' is already registered"):
        register_sender(FixedStats(), registry, name="audit")


def test_label_values_past_the_bound_of_their_scope_become_other() -> None:
    bounded = BoundedLabels(2)
    assert [bounded(("p",), v) for v in ("a", "b", "c", "a")] == ["a", "b", OTHER, "a"]
    assert bounded(("q",), "c") == "c"  # each scope has its own bound


# ------------------------------------------------------------------- a batch's run counts


@pytest.fixture
def fresh() -> Iterator[Metrics]:
    yield reset()
    reset()


class Batches:
    """Batches folded as the fold host folds them, states kept between them as stored bytes."""

    def __init__(self) -> None:
        self.stored: dict[bytes, bytes] = {}
        self.labels = RunLabels()

    def get(self, partition: int, state_key: bytes) -> RunState | None:
        value = self.stored.get(state_key)
        return None if value is None else RunState.from_bytes(value)

    def fold(self, events: Sequence[Event]) -> None:
        counts = BatchMetrics(self.get, {}, self.labels)
        folded = FoldedBatch({}, counts.load)
        for offset, event in enumerate(events):
            state_key, state, _ = folded.fold(event, 0, offset)
            counts.folded(state_key, state, event.type)
        folded.add_run_rows()
        counts.count(folded)
        for state_key, (state, _) in folded.touched.items():
            self.stored[state_key] = state.to_bytes()


def sample(name: str, **labels: str) -> float:
    return metrics().registry.get_sample_value(name, labels) or 0.0


def test_a_batch_counts_transitions_once_and_re_deliveries_not_at_all(fresh: Metrics) -> None:
    run, batches = Run("r1", flow="checkout"), Batches()
    started, completed = run.started("charge", 1), run.completed("charge", 2)
    batches.fold([started, completed])
    flow = {"project": "acme", "flow": "checkout"}
    assert sample("steplog_runs_started_total", **flow) == 1
    assert sample("steplog_steps_ended_total", **flow, step="charge", status="completed") == 1
    assert sample("steplog_events_folded_total", type="step.completed") == 1

    # Re-delivered, then the run's end: the step and the run are not counted again.
    batches.fold([completed, run.run_completed(3)])
    assert sample("steplog_events_folded_total", type="step.completed") == 1
    assert sample("steplog_steps_ended_total", **flow, step="charge", status="completed") == 1
    assert sample("steplog_runs_started_total", **flow) == 1
    assert sample("steplog_runs_ended_total", **flow, status="completed") == 1

    # A late step of the ended run: the step ends, the run does not end again.
    batches.fold([run.skipped("receipt", 4)])
    assert sample("steplog_steps_ended_total", **flow, step="receipt", status="skipped") == 1
    assert sample("steplog_runs_ended_total", **flow, status="completed") == 1


def test_a_failed_step_ends_an_instrumented_run_failed(fresh: Metrics) -> None:
    run, batches = Run("r2", flow="checkout"), Batches()
    batches.fold([run.started("charge", 1)])
    batches.fold([run.failed("charge", 2, "card declined")])
    flow = {"project": "acme", "flow": "checkout"}
    assert sample("steplog_steps_ended_total", **flow, step="charge", status="failed") == 1
    assert sample("steplog_runs_ended_total", **flow, status="failed") == 1
    batches.fold([run.run_failed(3, "card declined")])  # said again: ended already
    assert sample("steplog_runs_ended_total", **flow, status="failed") == 1
