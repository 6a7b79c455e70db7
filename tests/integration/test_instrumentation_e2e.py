"""The seeds' instrumentation examples end to end: SDK -> Kafka -> faust processors -> ClickHouse,
read back the way an analyst reads them (clickhouse-connect over the stack's SQL endpoint)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from steplog import Client
from steplog.producers.flows_file import push_flows
from steplog.projections.log_reader import read_log
from steplog.schemas.codec import decode_dead_letter
from steplog.schemas.flows import FlowDefinition, FlowEdge, FlowStep
from tests.conftest import RunningProcessors, wait_for


class CardDeclined(Exception):
    pass


def chain(project: str, slug: str, keys: list[str], **deadlines: int) -> FlowDefinition:
    return FlowDefinition(
        project=project,
        slug=slug,
        steps=[FlowStep(sdk_step_key=k, deadline_ms=deadlines.get(k.replace("-", "_")))
               for k in keys],
        edges=[FlowEdge(source=a, target=b) for a, b in zip(keys, keys[1:])],
        ts=datetime.now(UTC),
    )


def rows(running: RunningProcessors, sql: str) -> list[dict[str, Any]]:
    result = running.sql.query(sql)
    return [dict(zip(result.column_names, row)) for row in result.result_rows]


def register_flows(running: RunningProcessors, definitions: list[FlowDefinition]) -> None:
    push_flows(running.settings, definitions)
    wait_for(
        lambda: rows(running, "SELECT count() AS n FROM flows FINAL")[0]["n"] == len(definitions),
        what="the flow definitions to reach the processors",
    )


def test_the_seeds_checkout_examples_land_in_runs_and_steps(processors: RunningProcessors) -> None:
    settings = processors.settings
    register_flows(processors, [
        chain(settings.project, "checkout", ["reserve-stock", "charge-card", "send-receipt"]),
        chain(settings.project, "refund", ["lookup", "refund", "notify"]),
        chain(settings.project, "import", ["fetch"], fetch=300),
    ])
    client = Client(settings=settings, capture_stack=True)

    ok = client.run("checkout", run_id="ok")
    assert ok.step("reserve-stock", lambda cart: len(cart), [1, 2]) == 2
    ok.step("charge-card", lambda: 4200)
    ok.step("send-receipt", lambda: None)

    declined = client.run("checkout", run_id="declined")
    declined.step("reserve-stock", lambda: None)
    raised = CardDeclined("card declined: insufficient funds")

    def charge() -> None:
        raise raised

    with pytest.raises(CardDeclined) as caught:
        declined.step("charge-card", charge)
    assert caught.value is raised  # the original exception, re-raised unchanged

    skipped = client.run("checkout", run_id="skipped")
    with skipped.step("reserve-stock"):
        pass
    skipped.step("charge-card", lambda: None)
    skipped.skip("send-receipt", reason="customer opted out")

    for step_key in ("reserve-stock", "charge-card", "send-receipt"):
        client.record_step(flow_key="checkout", run_id="manual", step_key=step_key,
                           status="success")

    client.record_step(flow_key="import", run_id="hung", step_key="fetch", status="running")

    partial = client.run("refund", run_id="partial")
    partial.step("lookup", lambda: None)
    partial.step("notify", lambda: None)  # `refund` never reports: it is missing

    assert client.flush(timeout=60)
    client.close()

    expected_runs = {
        "ok": "completed", "declined": "failed", "skipped": "completed", "manual": "completed",
        "hung": "stuck", "partial": "running",
    }
    wait_for(
        lambda: {r["run_id"]: r["status"] for r in rows(
            processors, "SELECT run_id, status FROM runs_current")} == expected_runs,
        what=f"runs_current to show {expected_runs}",
    )

    steps = {(r["run_id"], r["step_key"]): r for r in rows(processors, "SELECT * FROM steps_current")}
    assert {key: row["status"] for key, row in steps.items()} == {
        ("ok", "reserve-stock"): "completed",
        ("ok", "charge-card"): "completed",
        ("ok", "send-receipt"): "completed",
        ("declined", "reserve-stock"): "completed",
        ("declined", "charge-card"): "failed",
        ("declined", "send-receipt"): "missing",
        ("skipped", "reserve-stock"): "completed",
        ("skipped", "charge-card"): "completed",
        ("skipped", "send-receipt"): "skipped",
        ("manual", "reserve-stock"): "completed",
        ("manual", "charge-card"): "completed",
        ("manual", "send-receipt"): "completed",
        ("hung", "fetch"): "stuck",
        ("partial", "lookup"): "completed",
        ("partial", "refund"): "missing",
        ("partial", "notify"): "completed",
    }
    failed_step = steps[("declined", "charge-card")]
    assert failed_step["error_type"] == "CardDeclined"
    assert failed_step["error_message"] == "card declined: insufficient funds"
    assert "raise raised" in failed_step["error_stack"]
    for key in (("ok", "reserve-stock"), ("ok", "charge-card"), ("skipped", "reserve-stock")):
        assert steps[key]["duration_ms"] > 0
        assert steps[key]["started_at"] <= steps[key]["finished_at"]
        assert steps[key]["attempt"] == 1

    runs = {r["run_id"]: r for r in rows(processors, "SELECT * FROM runs_current")}
    assert runs["declined"]["error_type"] == "CardDeclined"
    assert runs["ok"]["duration_ms"] >= max(
        steps[("ok", k)]["duration_ms"] for k in ("reserve-stock", "charge-card", "send-receipt")
    )
    assert runs["hung"]["finished_at"] is None
    assert runs["partial"]["finished_at"] is None


def test_undecodable_events_go_to_the_dead_letter_topic_and_processing_goes_on(
    processors: RunningProcessors,
) -> None:
    settings = processors.settings

    async def produce_garbage() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(settings.topics.events, b"{not json", key=b"run-x")
            await producer.send_and_wait(
                settings.topics.events, b'{"type": "step.exploded"}', key=b"run-x"
            )
        finally:
            await producer.stop()

    asyncio.run(produce_garbage())
    client = Client(settings=settings)
    client.run("checkout", run_id="after-garbage").step("charge-card", lambda: None)
    assert client.flush(timeout=60)
    client.close()
    wait_for(
        lambda: rows(processors, "SELECT count() AS n FROM runs_current "
                                 "WHERE run_id = 'after-garbage'")[0]["n"] == 1,
        what="the valid run after the garbage to be projected",
    )

    async def dead_letters() -> list[Any]:
        return [decode_dead_letter(r.value)
                async for r in read_log(settings.kafka_bootstrap, settings.topics.dlq)]

    letters = asyncio.run(dead_letters())
    assert [letter.source_topic for letter in letters] == [settings.topics.events] * 2
    assert [letter.offset for letter in letters] == sorted(letter.offset for letter in letters)
    assert "JSON" in letters[0].reason
    assert letters[1].field == "type" and "step.exploded" in letters[1].reason
