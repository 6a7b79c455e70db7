"""A workflow's cancel_on rules: declared on the app, registered per run, released at its end."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from steplog.errors import ExpressionError, WorkflowError
from steplog.producers.app import App
from steplog.producers.cancel_on import cancel_registrations, cancel_releases
from steplog.producers.context import WorkflowContext
from steplog.schemas.flows import CancelOn
from steplog.schemas.ids import wait_registration_id

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
RULES = (CancelOn(event="order.cancelled", match="data.order_id"),
         CancelOn(event="shop.closed", condition="event.data.region == 'EU'"))


async def process(ctx: WorkflowContext) -> Any:
    return None


def test_the_rules_are_part_of_the_workflows_definition() -> None:
    app = App("shop", project="acme")
    app.workflow("order.process", cancel_on=RULES)(process)
    (definition,) = app.definitions()
    assert definition.cancel_on == list(RULES)


@pytest.mark.parametrize(("rules", "error", "expected"), [
    (["order.cancelled"], WorkflowError, "cancel_on[0]: 'order.cancelled' is not a CancelOn"),
    ([CancelOn(event="x", condition="event.data.n >")], ExpressionError,
     "cancel_on[0].condition: 'event.data.n >' is not a valid condition"),
])
def test_a_bad_rule_is_refused_at_declaration(
    rules: list[Any], error: type[Exception], expected: str
) -> None:
    with pytest.raises(error, match=expected.replace("[", r"\[").replace("]", r"\]")):
        App("shop", project="acme").workflow("order.process", cancel_on=rules)(process)


def test_a_run_registers_one_cancelling_wait_per_rule_and_releases_each() -> None:
    registrations = cancel_registrations(
        RULES, project="acme", app="shop", workflow="order.process", run_id="run-1",
        trigger_event={"name": "order.placed", "data": {"order_id": "o-7"}}, now=NOW,
    )
    assert [(r.name, r.step_key, r.match_value, r.condition, r.cancels_run)
            for r in registrations] == [
        ("order.cancelled", "$cancel_on.0", "o-7", None, True),
        ("shop.closed", "$cancel_on.1", None, "event.data.region == 'EU'", True),
    ]
    assert registrations[0].event_id == wait_registration_id("run-1", "$cancel_on.0", 1)
    releases = cancel_releases(RULES, project="acme", workflow="order.process",
                               run_id="run-1", now=NOW)
    assert [(r.name, r.step_key, r.reason) for r in releases] == [
        ("order.cancelled", "$cancel_on.0", "cancelled"),
        ("shop.closed", "$cancel_on.1", "cancelled"),
    ]


def test_a_match_path_missing_from_the_trigger_event_registers_nothing() -> None:
    assert cancel_registrations(
        RULES[:1], project="acme", app="shop", workflow="order.process", run_id="run-1",
        trigger_event={"name": None, "data": {"id": 7}}, now=NOW,
    ) == []
