"""The operator's promise: kill the processors at any moment, restart them, and the projections
converge; replaying the log from offset 0 rebuilds them row for row.

A randomized workload (fixed seed) of over 20,000 events: runs of two flows (one with a declared
graph), failures, retries, skips, explicit completions, run ids shared by two flows, events of a
run sent out of order, and some events sent twice.

The processors and replay's fold processes get 1 MiB for their run states, a fraction of what
the workload's take, so states go to disk and come back all along (processors/held_states.py):
in the fold, in the recovery after the kill, and in replay.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from steplog.producers.flows_file import push_flows
from steplog.producers.sender import EventSender
from steplog.schemas.events import (
    ErrorInfo,
    Event,
    RunCompleted,
    RunCompletedPayload,
    StepCompleted,
    StepCompletedPayload,
    StepFailed,
    StepFailedPayload,
    StepSkipped,
    StepStarted,
    StepStartedPayload,
    new_event_id,
)
from steplog.schemas.flows import FlowDefinition, FlowEdge, FlowStep
from steplog.settings import Settings
from tests.conftest import RunningProcessors, replay_dry_run, run_cli, start_processors, wait_for

RUNS = 2800
CHECKOUT = ["validate", "reserve", "charge", "ship"]


def checkout_flow(project: str) -> FlowDefinition:
    return FlowDefinition(
        project=project,
        slug="checkout",
        steps=[FlowStep(sdk_step_key=key) for key in CHECKOUT],
        edges=[FlowEdge(source=a, target=b) for a, b in zip(CHECKOUT, CHECKOUT[1:])],
        ts=datetime.now(UTC),
    )


def run_events(rng: random.Random, project: str, flow: str, run_id: str, t0: datetime) -> list[Event]:
    """One run's events in the order its producer saw them (seq counts up)."""
    events: list[Event] = []
    clock = t0

    def envelope(step_key: str | None, attempt: int = 1) -> dict[str, Any]:
        nonlocal clock
        clock += timedelta(milliseconds=rng.randint(1, 40))
        fields: dict[str, Any] = dict(event_id=new_event_id(), project=project, flow=flow,
                                      run_id=run_id, ts=clock, seq=len(events), attempt=attempt)
        if step_key is not None:
            fields["step_key"] = step_key
        return fields

    keys = CHECKOUT if flow == "checkout" else [f"part-{n}" for n in range(rng.randint(2, 5))]
    for key in keys:
        if rng.random() < 0.08:
            events.append(StepSkipped(**envelope(key)))
            continue
        attempts = 2 if rng.random() < 0.1 else 1
        for attempt in range(1, attempts + 1):
            events.append(StepStarted(**envelope(key, attempt),
                                      payload=StepStartedPayload(input={"n": attempt})))
            last = attempt == attempts
            if last and rng.random() < 0.07:
                events.append(StepFailed(**envelope(key, attempt), payload=StepFailedPayload(
                    error=ErrorInfo(type="Declined", message=f"declined {run_id}"))))
                return events
            if not last:
                events.append(StepFailed(**envelope(key, attempt), payload=StepFailedPayload(
                    error=ErrorInfo(type="Timeout", message="try again"),
                    retry_at=clock + timedelta(seconds=1))))
            else:
                events.append(StepCompleted(**envelope(key, attempt), payload=StepCompletedPayload(
                    output={"key": key}, duration_ms=float(rng.randint(1, 500)))))
    if flow != "checkout" and rng.random() < 0.5:
        events.append(RunCompleted(**envelope(None), payload=RunCompletedPayload(output={"ok": 1})))
    return events


def workload(project: str, seed: int = 20261121) -> tuple[list[Event], int, int]:
    """(events as sent, with reordering and duplicates; distinct events; runs)."""
    rng = random.Random(seed)
    t0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    runs: list[list[Event]] = []
    for n in range(RUNS):
        flow = "checkout" if n % 2 else "etl"
        run_id = f"run-{n // 2 if n % 40 < 2 else n}"  # every 40th pair shares a run id
        events = run_events(rng, project, flow, run_id, t0 + timedelta(seconds=n))
        for i in range(len(events) - 1):  # out of order: swap neighbours now and then
            if rng.random() < 0.15:
                events[i], events[i + 1] = events[i + 1], events[i]
        runs.append(events)
    distinct = sum(len(events) for events in runs)
    sent: list[Event] = []
    for events in runs:
        sent += events
    # 5% sent a second time, later (inserting from the back keeps earlier positions valid)
    for position in sorted(rng.sample(range(len(sent)), k=len(sent) // 20), reverse=True):
        sent.insert(rng.randrange(position + 1, len(sent) + 1), sent[position])
    return sent, distinct, len({(e.flow, e.run_id) for e in sent})


def send(settings: Settings, events: list[Event]) -> None:
    sender = EventSender(settings.kafka_bootstrap, settings.topics.events)
    for event in events:
        sender.send_event(event)
    assert sender.flush(timeout=120), sender.stats()
    sender.close()


def scalar(running: RunningProcessors, sql: str) -> Any:
    return running.sql.query(sql).result_rows[0][0]


def test_killed_processors_converge_and_replay_rebuilds_the_same_rows(
    stack_settings: Settings, tmp_path: Any
) -> None:
    settings = stack_settings.model_copy(update={"state_memory_mb": 1})
    events, distinct, runs = workload(settings.project)
    assert distinct >= 20_000
    log = tmp_path / "processors.log"

    running = start_processors(settings, log)
    try:
        push_flows(settings, [checkout_flow(settings.project)])
        wait_for(lambda: scalar(running, "SELECT count() FROM flows") == 1, what="the flow")
        half = len(events) // 2
        send(settings, events[:half])
        wait_for(lambda: scalar(running, "SELECT count() FROM events") > 3000,
                 what="the processors to be part-way through the first half")
        running.stop(kill=True)  # SIGKILL, mid-stream
        send(settings, events[half:])  # while no processor runs: the log keeps them

        running = start_processors(settings, log)
        wait_for(lambda: scalar(running, "SELECT sum(version) FROM runs_current") == distinct,
                 timeout=300, what=f"all {distinct} distinct events folded into runs")
        assert scalar(running, "SELECT count() FROM events FINAL") == distinct
        assert scalar(running, "SELECT count() FROM runs_current") == runs
        assert scalar(running, "SELECT uniqExact(project, flow, run_id, step_key) "
                               "FROM steps_current") == scalar(
            running, "SELECT count() FROM steps_current")
        statuses = {status for (status,) in running.sql.query(
            "SELECT DISTINCT status FROM runs_current").result_rows}
        assert statuses >= {"completed", "failed", "running"}
        assert "go to disk from now on" in log.read_text(errors="replace")
    finally:
        running.stop()

    # Three fold processes over the six partitions (the real replay below: one per core).
    replay_dry_run(settings, 3, ("events", "runs", "steps", "flows"))

    replayed = run_cli(settings, "replay")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "swapped in" in replayed.stdout
    counted = run_cli(settings, "sql", "SELECT count() AS runs FROM runs_current",
                          "--format", "csv")
    assert counted.stdout.splitlines() == ["runs", str(runs)], counted.stdout + counted.stderr
