"""The README's main job: `steplog dev --demo`.

Once the stack is up, an example checkout service instrumented with the SDK handles a few
hundred orders: most succeed, some cards are declined (the step fails and the error propagates
to the service, as it would without Steplog), some customers opted out of receipts (a skipped
step), a charge that times out is retried by the service (attempt 2), the mail service reports
its step with `record_step`, some orders take a code path that is not instrumented (a `missing`
step on the graph) and two stock reservations hang (`stuck` past their deadline). Then the
README's analyst queries run and print. Then durable workflows run on the same stack
(steplog.server.workflow_demo: triggers, a retry, a durable sleep, a wait answered by an event, a
child run) and their runs and steps print; the stack keeps serving SQL until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

from steplog.projections.queries import ANALYST_QUERIES
from steplog.producers.client import Client
from steplog.producers.flows_file import push_flows
from steplog.projections.clickhouse import query_value
from steplog.schemas.flows import FlowDefinition, FlowEdge, FlowStep
from steplog.settings import Settings
from steplog.server.sql_client import OutputFormat, analyst_client, render
from steplog.server.stack import StackHooks
from steplog.server.workflow_demo import WORKFLOW_QUERIES, run_workflow_demo

ORDERS = 300
STUCK_ORDERS = 2
RESERVE_DEADLINE_MS = 1500
CHECKOUT_STEPS = ("validate-cart", "reserve-stock", "charge-card", "send-receipt")


class CardDeclined(Exception):
    """What the example payment provider raises."""


def checkout_flow(project: str) -> FlowDefinition:
    return FlowDefinition(
        project=project,
        slug="checkout",
        name="Checkout",
        step_deadline_ms=30_000,
        steps=[
            FlowStep(sdk_step_key=key, deadline_ms=RESERVE_DEADLINE_MS if key == "reserve-stock" else None)
            for key in CHECKOUT_STEPS
        ],
        edges=[FlowEdge(source=a, target=b) for a, b in zip(CHECKOUT_STEPS, CHECKOUT_STEPS[1:])],
        ts=datetime.now(UTC),
    )


async def _work(rng: random.Random, low_ms: float, high_ms: float) -> None:
    await asyncio.sleep(rng.uniform(low_ms, high_ms) / 1000)


async def checkout(client: Client, run_id: str, number: int, rng: random.Random) -> str:
    """One order through the instrumented service; returns what happened to it."""
    run = client.run("checkout", run_id=run_id)
    if number % 50 != 17:  # this code path never instrumented validation: `missing`
        await run.step("validate-cart", _work, rng, 1, 4)
    await run.step("reserve-stock", _work, rng, 2, 10, metadata={"warehouse": "eu-1"})

    async def charge(attempt: int) -> None:
        await _work(rng, 5, 30)
        if number % 7 == 3:
            raise CardDeclined("card declined: insufficient funds")
        if number % 11 == 6 and attempt == 1:
            raise TimeoutError("payment provider timed out")

    try:
        await run.step("charge-card", charge, 1, metadata={"amount_cents": 4200})
    except CardDeclined:
        return "declined"
    except TimeoutError:
        await run.step("charge-card", charge, 2, metadata={"amount_cents": 4200})
    if number % 5 == 4:
        run.skip("send-receipt", reason="customer opted out of receipts")
    elif number % 13 == 5:
        # The mail service sends this receipt and reports the step itself.
        client.record_step(flow_key="checkout", run_id=run_id, step_key="send-receipt",
                           status="success")
    else:
        await run.step("send-receipt", _work, rng, 1, 5)
    return "ok"


def run_demo_service(settings: Settings, say: Callable[[str], None]) -> str:
    """Send the demo's orders; returns the run id prefix they share."""
    prefix = f"demo-{datetime.now(UTC):%H%M%S}"
    rng = random.Random(7)
    client = Client(settings=settings, capture_stack=True)

    async def all_orders() -> list[str]:
        outcomes = []
        for first in range(0, ORDERS, 50):  # 50 orders in flight at a time
            outcomes += await asyncio.gather(*(
                checkout(client, f"{prefix}-{n:03d}", n, rng) for n in range(first, first + 50)
            ))
        return outcomes

    outcomes = asyncio.run(all_orders())
    for n in range(STUCK_ORDERS):
        # A reservation that hangs: it started and never reports again.
        client.record_step(flow_key="checkout", run_id=f"{prefix}-stuck-{n}",
                           step_key="reserve-stock", status="running")
    client.flush(timeout=60)
    stats = client.stats()
    client.close()
    say(f"demo: {ORDERS + STUCK_ORDERS} checkout runs sent ({outcomes.count('declined')} cards "
        f"declined); {stats.sent} events acknowledged by Kafka, {stats.dropped} dropped")
    return prefix


def demo_hooks(settings: Settings, *, exit_after: bool, out: TextIO | None = None) -> StackHooks:
    """Hooks that run the demo in a thread once the processors are up."""

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    def demo() -> None:
        try:
            show_demo(settings, say)
        except Exception as exc:  # the demo must not take the stack down with a traceback
            say(f"demo failed: {exc!r}")
        if exit_after:
            os.kill(os.getpid(), signal.SIGTERM)  # the worker stops as on Ctrl-C
        else:
            say(f"\nThe stack keeps running. Dashboard: http://127.0.0.1:{settings.api_port}/runs"
                f"\nSQL on http://127.0.0.1:{settings.sql_port} (try `steplog sql \"SELECT status, "
                "count() FROM runs_current GROUP BY status\"`). Ctrl-C stops it.")

    return StackHooks(on_ready=lambda: threading.Thread(target=demo, daemon=True).start())


def show_demo(settings: Settings, say: Callable[[str], None]) -> None:
    database = settings.clickhouse_database
    # The SQL endpoint when the store process holds the chDB files, as any analyst would.
    client = analyst_client(settings)
    flow = checkout_flow(settings.project)
    push_flows(settings, [flow])
    _wait(lambda: query_value(
        client,
        f"SELECT count() > 0 FROM {database}.flows WHERE project = {{p:String}} "
        "AND slug = 'checkout'",
        {"p": settings.project}) == 1, "the checkout flow to be registered")
    prefix = run_demo_service(settings, say)
    expected = ORDERS + STUCK_ORDERS
    _wait(lambda: query_value(
        client,
        f"SELECT count() = {expected} AND countIf(status = 'stuck') = {STUCK_ORDERS} "
        f"FROM {database}.runs_current WHERE startsWith(run_id, {{p:String}})",
        {"p": prefix}) == 1,
        "every demo run to be projected (and the hanging ones to pass their deadline)")
    queries = [(query.title, query.sql) for query in ANALYST_QUERIES]
    run_workflow_demo(settings, client, say, _wait)
    for title, sql in [*queries, *WORKFLOW_QUERIES]:
        result = client.query(sql)
        say(f"\n-- {title}\n{sql}")
        say(render(result.column_names, result.result_rows, OutputFormat.TABLE))


def _wait(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
