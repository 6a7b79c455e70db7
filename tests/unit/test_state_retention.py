"""The state retention's rule on the log's time: finished runs leave the state once the log's
time passes their end + retention, later events for them are `run closed` until the horizon,
and the decision depends on the records alone (so replay, batching otherwise, decides the same).
"""

from __future__ import annotations

import pytest

from steplog.processors.batch_fold import FoldedBatch, HeldRunStates
from steplog.processors.fold.state_retention import StateRetention, Verdict
from steplog.processors.held_states import LOG_TIME_KEY, HeldStates, closed_marker, marked_end
from steplog.processors.run_retention import RunClosedError
from steplog.schemas.events import Event
from tests.unit.test_fold import Run, at

RETENTION = StateRetention(retention_ms=60_000, horizon_ms=120_000)


def ms(seconds: float) -> int:
    return int(at(seconds).timestamp() * 1000)


def test_verdict_is_open_until_end_plus_retention_then_closed_until_the_horizon() -> None:
    end = 1_000
    assert RETENTION.verdict(None, 10**12) is Verdict.OPEN  # not ended: never leaves
    assert RETENTION.verdict(end, end + 60_000) is Verdict.OPEN
    assert RETENTION.verdict(end, end + 60_001) is Verdict.CLOSED
    assert RETENTION.verdict(end, end + 180_000) is Verdict.CLOSED
    assert RETENTION.verdict(end, end + 180_001) is Verdict.FORGOTTEN
    with pytest.raises(ValueError, match="expected durations"):
        StateRetention(-1, 0)


Log = list[tuple[Event, int]]
"""Records of one partition in offset order: (event, broker timestamp ms)."""


def fold_log(
    log: Log, batch_size: int, held: HeldStates | None = None
) -> tuple[list[int], HeldStates]:
    """Fold `log` in batches as the processors and replay do: the offsets refused `run closed`,
    and the states left."""
    held = held or HeldStates(1 << 20, RETENTION)
    if not held.partitions:
        held.hold([0])
    runs = HeldRunStates(held)
    closed = []
    for start in range(0, len(log), batch_size):
        folded = FoldedBatch({}, runs.get, admission=runs.admission)
        for offset, (event, timestamp) in enumerate(log[start:start + batch_size], start):
            try:
                folded.fold(event, 0, offset, timestamp)
            except RunClosedError as exc:
                assert exc.problem == "run closed"
                closed.append(offset)
        folded.add_run_rows()
        runs.keep(folded)
    return closed, held


def finished_then_late() -> tuple[Log, bytes]:
    """Run a ends at 5 s; the log's time moves on with run b; then a's late events."""
    a, b = Run("a"), Run("b")
    log: Log = [(a.run_started(0), ms(0)), (a.run_completed(5), ms(5))]
    log += [(b.run_started(t), ms(t)) for t in (30, 66)]
    log += [(a.completed("late", 66), ms(66))]  # past 5 + 60: closed
    log += [(b.run_completed(300), ms(300)), (a.completed("later", 300), ms(300))]  # forgotten
    return log, b"acme\x00checkout\x00a"


def test_a_late_event_for_a_finished_run_is_closed_and_its_state_gone() -> None:
    log, key = finished_then_late()
    closed, held = fold_log(log[:5], batch_size=100)
    assert closed == [4]
    assert held.get(0, key) == closed_marker(ms(5))  # the state left, its marker stays
    assert HeldRunStates(held).get(0, key) is None
    assert held.ended_at(0, key) == ms(5)


def test_the_decision_depends_on_the_records_not_on_the_batches() -> None:
    log, key = finished_then_late()
    assert fold_log(log, batch_size=1)[0] == fold_log(log, batch_size=3)[0] == [4]


def test_after_the_horizon_an_event_starts_the_run_afresh() -> None:
    log, key = finished_then_late()
    _, held = fold_log(log, batch_size=2)
    state = HeldRunStates(held).get(0, key)
    assert state is not None and state.version == 1  # only the last event: a fresh run


def test_expire_turns_states_into_markers_then_tombstones_even_from_disk() -> None:
    held = HeldStates(4000, RETENTION)  # a few states in memory, the rest spill
    held.hold([0])
    for number in range(100):
        held.put(0, b"run-%03d" % number, b"state" * 40, ended_ms=1_000 if number < 50 else None)
    held.spill()
    held.advance_log_time(0, 61_001)
    changed = held.expire()
    assert sorted(key for _, key, _ in changed) == [b"run-%03d" % n for n in range(50)]
    assert {value for _, _, value in changed} == {closed_marker(1_000)}
    assert marked_end(held.get(0, b"run-000") or b"") == 1_000
    held.advance_log_time(0, 181_001)
    assert {value for _, _, value in held.expire()} == {None}  # tombstones
    assert len(held) == 50 and held.get(0, b"run-000") is None
    assert held.get(0, b"run-099") == b"state" * 40


def test_the_log_time_and_markers_come_back_from_the_changelog() -> None:
    held = HeldStates(1 << 20, RETENTION)
    held.hold([0])
    held.advance_log_time(0, 70_000)
    (log_time,) = held.take_log_times().values()
    assert held.take_log_times() == {}  # taken once
    again = HeldStates(1 << 20, RETENTION)
    again.begin_load([0])
    again.load(0, [(LOG_TIME_KEY, log_time), (b"run", closed_marker(1_000)), (b"b", b"s", 9_000)])
    again.end_load()
    assert again.advance_log_time(0, 0) == 70_000
    assert (again.ended_at(0, b"run"), again.ended_at(0, b"b")) == (1_000, 9_000)
    assert again.take_log_times() == {}  # already in the changelog
