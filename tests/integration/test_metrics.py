"""Prometheus metrics on the real stack: `steplog processors` (their health port's /metrics) and
a `steplog worker --metrics-port` run workflows that complete and fail, plus a message that is
dead-lettered; the scraped counters moved, with the right labels. The web service's /metrics
and who may read it are in test_web_auth.py's route matrix."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from steplog.producers.client import Client
from steplog.settings import Settings, child_environment
from tests.conftest import RunningProcessors, free_port, wait_for

APP_MODULE = """\
import steplog
from steplog.errors import NonRetriableError

app = steplog.App("metered")


@app.workflow("invoice.send")
async def send(ctx):
    return await ctx.step.run("render", lambda: "pdf")


def refuse():
    raise NonRetriableError("voided")


@app.workflow("invoice.void")
async def void(ctx):
    return await ctx.step.run("refuse", refuse)
"""


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the endpoint, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_processors_and_worker_metrics_move_with_the_runs_they_carry(
    processors: RunningProcessors, tmp_path: Path
) -> None:
    settings = processors.settings
    # Not in tmp_path itself: the data dir there, `steplog/`, would shadow the package.
    home = tmp_path / "app"
    home.mkdir()
    (home / "metered.py").write_text(APP_MODULE)
    worker_port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-c", "from steplog.server.entry import main; main()",
         "worker", "metered:app", "--metrics-port", str(worker_port)],
        cwd=home, env=child_environment(settings),
        stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT,
    )
    try:
        with Client(settings=settings) as client:
            client.start("invoice.send", app="metered")
            client.start("invoice.void", app="metered")
        asyncio.run(_send_garbage(settings))

        project, events = settings.project, settings.topics.events
        sent = {"project": project, "flow": "invoice.send"}
        void = {"project": project, "flow": "invoice.void"}

        def runs_ended() -> bool:
            samples = scrape(settings.health_port)
            return (value(samples, "steplog_runs_ended_total", **sent, status="completed") == 1
                    and value(samples, "steplog_runs_ended_total", **void, status="failed") == 1
                    and value(samples, "steplog_dead_letters_total", topic=events,
                              reason="malformed") == 1)

        wait_for(runs_ended, timeout=60, what="both runs ended and the dead letter counted")
        samples = scrape(settings.health_port)
        assert value(samples, "steplog_runs_started_total", **sent) == 1
        assert value(samples, "steplog_runs_started_total", **void) == 1
        assert value(samples, "steplog_steps_ended_total", **sent, step="render",
                     status="completed") == 1
        assert value(samples, "steplog_steps_ended_total", **void, step="refuse",
                     status="failed") == 1
        assert value(samples, "steplog_events_folded_total", type="run.started") == 2
        assert value(samples, "steplog_events_consumed_total", topic=events) >= 7
        assert value(samples, "steplog_fold_batch_seconds_count") >= 1
        assert value(samples, "steplog_clickhouse_insert_seconds_count", table="runs") >= 1
        assert ("steplog_timers_pending", frozenset()) in samples
        assert ("steplog_runs_waiting", frozenset()) in samples
        # Sampled by the health endpoint every STEPLOG_LAG_SAMPLE_S, per partition.
        wait_for(lambda: ("steplog_consumer_lag", frozenset(
            {("topic", events), ("partition", "0")})) in scrape(settings.health_port),
            timeout=30, what="the lag sampled")

        at_worker = scrape(worker_port)
        assert value(at_worker, "steplog_workflow_schedule_to_start_seconds_count",
                     flow="invoice.send") == 1
        assert value(at_worker, "steplog_worker_steps_in_flight", app="metered") == 0
    finally:
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(30)


async def _send_garbage(settings: Settings) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.events, b"{not json", key=b"junk")
    finally:
        await producer.stop()
