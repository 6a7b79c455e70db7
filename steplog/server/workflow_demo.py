"""The demo's second half: durable workflows on the same stack.

An example fulfilment app: each `order.placed` event starts `order.fulfil`, which charges the
card (the provider times out on a first attempt now and then: a retry), waits a second for the
payment to settle (a durable sleep), parks until the warehouse says the parcel is packed (a
wait for `order.packed` matched on the order id, answered here once the run is parked), and
then runs a child workflow that notifies the customer. The runs and their steps are then shown
from `runs_current` and `steps_current`, as an analyst would read them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Final

from clickhouse_connect.driver.client import Client as SqlClient

from steplog.producers.app import App
from steplog.producers.client import Client
from steplog.producers.context import WorkflowContext
from steplog.schemas.flows import RetryPolicy
from steplog.settings import Settings

ORDERS: Final = 20
STEPS_SQL: Final = """SELECT r.run_id, r.status, round(r.duration_ms) AS duration_ms,
       s.step_key, s.kind, s.status AS step_status, s.attempt
FROM runs_current AS r
JOIN steps_current AS s ON s.run_id = r.run_id AND s.project = r.project
WHERE r.flow = 'order.fulfil' AND r.run_id IN (
    -- one run whose charge needed a retry, one whose charge did not
    SELECT any(run_id) FROM steps_current
    WHERE flow = 'order.fulfil' AND step_key = 'charge-card' GROUP BY attempt > 1
)
ORDER BY r.run_id, s.started_at"""
SUMMARY_SQL: Final = """SELECT flow, status, count() AS runs, round(avg(duration_ms)) AS avg_ms
FROM runs_current
WHERE app = 'fulfilment'
GROUP BY flow, status
ORDER BY flow, status"""
WORKFLOW_QUERIES: Final = (
    ("Durable workflows: runs by status", SUMMARY_SQL),
    ("Two fulfilment runs step by step, one with a retried charge", STEPS_SQL),
)


def fulfilment_app(settings: Settings) -> App:
    # Quick retries, so that the demo does not wait the default few seconds.
    app = App("fulfilment", settings=settings, retries=RetryPolicy(initial_delay_ms=200))
    timed_out_once: set[int] = set()  # the provider's flakiness (each attempt is a new pass)

    def charge(payment: dict[str, Any]) -> dict[str, Any]:
        number = payment["number"]
        if number % 4 == 1 and number not in timed_out_once:
            timed_out_once.add(number)
            raise TimeoutError("payment provider timed out")
        return {"charged_cents": payment["amount_cents"]}

    @app.workflow("order.fulfil", triggers=["order.placed"])
    async def fulfil(ctx: WorkflowContext) -> Any:
        order = ctx.event.data
        assert isinstance(order, dict)

        charged = await ctx.step.run(
            "charge-card", charge,
            input={"number": order["number"], "amount_cents": order["amount_cents"]},
        )
        await ctx.step.sleep("settle", "1s")
        packed = await ctx.step.wait_for_event(
            "await-packing", event="order.packed", timeout="5m", match="data.order_id"
        )
        await ctx.step.run_workflow("notify", name="customer.notify", data=order)
        return {"charge": charged, "packed_by": packed.get("by") if isinstance(packed, dict) else None}

    @app.workflow("customer.notify")
    async def notify(ctx: WorkflowContext) -> Any:
        return await ctx.step.run("send-email", lambda: f"sent to customer of {ctx.event.data}")

    return app


def run_workflow_demo(
    settings: Settings,
    sql: SqlClient,
    say: Callable[[str], None],
    wait: Callable[[Callable[[], bool], str], None],
) -> None:
    """Run the fulfilment app's orders to their end (then show WORKFLOW_QUERIES)."""
    with BackgroundWorker(fulfilment_app(settings)), Client(settings=settings) as client:
        order_ids = [f"wf-{number:03d}" for number in range(ORDERS)]
        for number, order_id in enumerate(order_ids):
            client.send_event(
                "order.placed", {"order_id": order_id, "number": number, "amount_cents": 4200}
            )
        say(f"demo: {ORDERS} order.placed events sent to the fulfilment workflows")

        def count(where: str) -> int:
            return int(sql.query(f"SELECT count() FROM {where}").result_rows[0][0])

        wait(lambda: count(
            "steps_current WHERE flow = 'order.fulfil' AND step_key = 'await-packing' "
            "AND status = 'running'"
        ) == ORDERS, "every order to wait for its packing (after its charge and settle)")
        for order_id in order_ids:
            client.send_event("order.packed", {"order_id": order_id, "by": "warehouse-eu-1"})
        say(f"demo: {ORDERS} order.packed events sent; the waiting runs resume")
        wait(lambda: count(
            "runs_current WHERE app = 'fulfilment' AND status = 'completed'"
        ) == 2 * ORDERS, "every fulfilment run and its notification child to complete")


class BackgroundWorker:
    """A worker of `app` on an event loop of its own thread (the demo's caller is a thread)."""

    def __init__(self, app: App) -> None:
        self._worker = app.worker()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> BackgroundWorker:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._worker.start(), self._loop).result(120)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._worker.stop(), self._loop).result(120)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
