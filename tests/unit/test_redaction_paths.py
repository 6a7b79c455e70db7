"""Every SDK path into the log redacts by the same rules (steplog.redaction), extra patterns
of STEPLOG_REDACT_KEYS included: step metadata, record_step, recorded outputs of instrumented
steps, and a workflow step's recorded input and output."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from steplog.producers.client import Client
from steplog.producers.context import TriggerEvent, WorkflowContext
from steplog.producers.history import RunHistory
from steplog.producers.run_pass import PassOutcome, RunPass
from steplog.producers.sink import MemorySink
from steplog.redaction import REDACTED, SecretRules
from steplog.schemas.events import StepCompleted, StepStarted
from steplog.schemas.flows import RetryPolicy
from steplog.settings import load_settings
from tests.unit.test_workflow_context import MemoryRunSink

CARD = "4111-1111-1111-1111"


def _client(redact_keys: str = "") -> tuple[Client, MemorySink]:
    sink = MemorySink()
    settings = load_settings(redact_keys=redact_keys)
    return Client(project="shop", sink=sink, settings=settings), sink


def test_step_metadata_is_redacted_with_the_extra_patterns_of_the_setting() -> None:
    client, sink = _client("ssn")

    client.run("checkout", run_id="r-1").step(
        "charge", lambda: None, metadata={"ssn": "123-45-6789", "password": "p", "qty": 2}
    )

    started = sink.events()[0]
    assert isinstance(started, StepStarted)
    assert started.payload.metadata == {"ssn": REDACTED, "password": REDACTED, "qty": 2}


def test_record_step_redacts_its_metadata_and_its_output() -> None:
    client, sink = _client("iban")

    client.record_step(
        flow_key="checkout", run_id="r-1", step_key="refund", status="success",
        metadata={"iban": "DE89", "order": "o-1"},
        output={"card": CARD, "refund": {"api_key": "k", "amount": 12}},
    )

    (completed,) = sink.events()
    assert isinstance(completed, StepCompleted)
    assert completed.payload.metadata == {"iban": REDACTED, "order": "o-1"}
    assert completed.payload.output == {"card": REDACTED, "refund": {"api_key": REDACTED,
                                                                     "amount": 12}}


def test_a_recorded_output_of_an_instrumented_step_is_redacted() -> None:
    client, sink = _client()

    returned = client.run("login", run_id="r-2").step(
        "token", lambda: {"access_token": "t-1", "user": "ada"}, record_output=True
    )

    assert returned == {"access_token": "t-1", "user": "ada"}  # the caller gets it whole
    completed = sink.events()[-1]
    assert isinstance(completed, StepCompleted)
    assert completed.payload.output == {"access_token": REDACTED, "user": "ada"}


def _execute(workflow: Any, secrets: SecretRules) -> tuple[Any, MemoryRunSink]:
    async def go() -> tuple[Any, MemoryRunSink]:
        sink = MemoryRunSink()
        run_pass = RunPass(
            fn=workflow, workflow="order.process", project="shop", app="shop", run_id="run-1",
            history=RunHistory(), event=TriggerEvent(name="order.placed", data={}, id="sig-1"),
            sink=sink, retries=RetryPolicy(attempts=1), jitter=lambda: 0.0, secrets=secrets,
        )
        return await run_pass.execute(), sink

    return asyncio.run(asyncio.wait_for(go(), timeout=30))


def test_a_workflow_step_records_its_input_and_output_redacted_and_the_pass_uses_them_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def workflow(ctx: WorkflowContext) -> Any:
        login = await ctx.step.run("login", lambda: {"access_token": "t-1", "user": "ada"})
        return await ctx.step.run(
            "call", lambda data: {"used": data["token"]},
            input={"token": login["access_token"], "ssn": "123", "card": CARD},
        )

    with caplog.at_level(logging.WARNING, logger="steplog.worker"):
        result, sink = _execute(workflow, SecretRules(["ssn"]))

    assert result.outcome is PassOutcome.COMPLETED
    assert result.output == {"used": "t-1"}  # the real token reached the next step
    recorded = {(type(e).__name__, getattr(e, "step_key", "")): e.payload for e in sink.events}
    assert recorded[("StepCompleted", "login")].output == {  # type: ignore[union-attr]
        "access_token": REDACTED, "user": "ada",
    }
    assert recorded[("StepStarted", "call")].input == {  # type: ignore[union-attr]
        "token": REDACTED, "ssn": REDACTED, "card": REDACTED,
    }
    assert "login" in caplog.text and "replay" in caplog.text
