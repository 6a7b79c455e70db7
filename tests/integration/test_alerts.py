"""Alerts on the real stack: a spike of failures in one flow fires one alert, which resolves
once the window has passed, however many evaluators run; both reach a webhook on 127.0.0.1
and the alerts table."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from steplog.producers.client import Client
from steplog.projections.alerts_table import alert_page
from steplog.projections.read_models import AlertPage
from steplog.server.alert_evaluator import AlertEvaluator
from steplog.server.lag_reader import LagReader
from steplog.server.read_store import ReadStore
from steplog.settings import Settings
from tests.conftest import RunningProcessors, free_port, wait_for

WINDOW_S = 10.0
"""Short, so that the test waits little for the resolution; long enough that the failures are
in ClickHouse (through Kafka and the processors) well before they leave it."""


class Declined(Exception):
    pass


class Evaluation:
    """Evaluators and a webhook server on one event loop in a thread of the test."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._settings, self._port = settings, port
        self._loop = asyncio.new_event_loop()
        self._stopped = asyncio.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._main(),))

    async def _main(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.received.append((request.path, json.loads(await request.read())))
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/generic", hook)
        app.router.add_post("/slack", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self._port).start()
        # Two evaluators, as two web services would run: the group elects one.
        store = ReadStore(self._settings)
        lag = LagReader(self._settings)
        evaluators = [asyncio.create_task(AlertEvaluator(self._settings, store, lag).run())
                      for _ in range(2)]
        try:
            await self._stopped.wait()
        finally:
            for evaluator in evaluators:
                evaluator.cancel()
            await asyncio.gather(*evaluators, return_exceptions=True)
            await lag.close()
            await runner.cleanup()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=60)
        self._loop.close()

    def states(self, path: str) -> list[str]:
        return [body.get("state") or body["text"].split()[1] for at, body in self.received
                if at == path]


@pytest.fixture
def evaluation(processors: RunningProcessors) -> Iterator[Evaluation]:
    port = free_port()
    settings = processors.settings.model_copy(update={
        "alert_window_s": WINDOW_S, "alert_baseline_s": 3600.0, "alert_interval_s": 0.5,
        "alert_webhooks": f"http://127.0.0.1:{port}/generic",
        "alert_slack_webhooks": f"http://127.0.0.1:{port}/slack",
    })
    running = Evaluation(settings, port)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_a_failure_spike_fires_one_alert_that_resolves_once_the_window_passes(
    processors: RunningProcessors, evaluation: Evaluation
) -> None:
    client = Client(settings=processors.settings)

    def decline() -> None:
        raise Declined("card declined")

    for _ in range(6):
        with pytest.raises(Declined):
            client.run("billing", run_id=uuid.uuid4().hex).step("charge-card", decline)
    client.run("shipping", run_id=uuid.uuid4().hex).step("label", lambda: None)
    assert client.flush(timeout=60)
    client.close()

    wait_for(lambda: evaluation.states("/generic") == ["firing"], timeout=WINDOW_S * 2,
             what="the spike's alert at the webhook")
    [(_, fired)] = [hook for hook in evaluation.received if hook[0] == "/generic"]
    assert (fired["rule"], fired["flow"], fired["value"]) == ("failure_spike", "billing", 6)
    # Its row is written before its webhooks start.
    assert [alert.alert_id for alert in page(processors).firing] == [fired["alert_id"]]
    wait_for(lambda: evaluation.states("/generic") == ["firing", "resolved"],
             timeout=WINDOW_S * 3, what="the alert's resolution at the webhook")
    wait_for(lambda: evaluation.states("/slack") == ["FIRING", "RESOLVED"], timeout=30,
             what="both at the Slack webhook")
    rows = processors.sql.query(
        "SELECT alert_id, state, rule, flow FROM alerts FINAL ORDER BY at"
    ).result_rows
    assert rows == [(fired["alert_id"], "firing", "failure_spike", "billing"),
                    (fired["alert_id"], "resolved", "failure_spike", "billing")]
    resolved = page(processors)
    assert resolved.firing == [] and [a.state for a in resolved.recent] == ["resolved", "firing"]


def page(processors: RunningProcessors) -> AlertPage:
    """`GET /v1/alerts`' answer, read as the web service reads it."""
    return alert_page(processors.sql, processors.settings.clickhouse_database, projects=None)
