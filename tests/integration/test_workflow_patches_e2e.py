"""`ctx.patched` on the real stack (broker, `steplog processors`, workers, ClickHouse): a run
parked under the old code keeps the old path when a worker with the new code resumes it; a run
started under the new code takes the new path, and steps_current shows its marker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from steplog.producers.app import App
from steplog.producers.client import Client
from steplog.producers.context import WorkflowContext
from steplog.schemas.signals import WaitRegistered
from steplog.settings import Settings
from steplog.topics import ensure_topics, topic_specs
from tests.conftest import isolated_settings, start_processors, wait_for, with_own_engine
from tests.workflow_harness import LogWatcher, WorkerThread


def refunds(settings: Settings, *, patched: bool) -> App:
    """App "shop" before (`patched=False`) and after the fee's change."""
    app = App("shop", project=settings.project, settings=settings)

    @app.workflow("refund")
    async def refund(ctx: WorkflowContext) -> object:
        if patched and ctx.patched("new-fee"):
            fee = await ctx.step.run("fee-v2", lambda: 2)
        else:
            fee = await ctx.step.run("fee", lambda: 1)
        await ctx.step.wait_for_event("approval", event="refund.approved", match="data.id")
        return fee

    return app


def test_a_deploy_keeps_runs_in_flight_on_the_old_path_and_new_runs_take_the_new_one(
    kafka_bootstrap: str, clickhouse_dsn: str, tmp_path: Path
) -> None:
    settings = with_own_engine(
        isolated_settings(kafka_bootstrap, clickhouse_dsn, tmp_path / "steplog"), tmp_path
    )
    asyncio.run(ensure_topics(settings.kafka_bootstrap, topic_specs(settings)))
    processors = start_processors(settings, tmp_path / "processors.log")
    try:
        with LogWatcher(settings) as log, Client(settings=settings) as client:

            def parked(run_id: str) -> None:
                log.wait(lambda: any(
                    isinstance(r.message, WaitRegistered) and r.message.run_id == run_id
                    for r in log.records
                ), what=f"run {run_id} to wait")

            with WorkerThread(refunds(settings, patched=False), settings):
                old = client.start("refund", {"id": "old"}, app="shop")
                parked(old)
            with WorkerThread(refunds(settings, patched=True), settings):
                new = client.start("refund", {"id": "new"}, app="shop")
                parked(new)
                for run_id in ("old", "new"):
                    client.send_event("refund.approved", {"id": run_id})
                assert old.result(timeout=60) == 1
                assert new.result(timeout=60) == 2

        def steps(run_id: str) -> set[str]:
            rows = processors.sql.query(
                "SELECT step_key FROM steps_current WHERE run_id = {id:String}",
                parameters={"id": run_id},
            ).result_rows
            return {row[0] for row in rows}

        wait_for(lambda: len(steps(new)) == 3, what="the new run's steps in ClickHouse")
        assert steps(new) == {"patched:new-fee", "fee-v2", "approval"}
        wait_for(lambda: len(steps(old)) == 2, what="the old run's steps in ClickHouse")
        assert steps(old) == {"fee", "approval"}
    finally:
        processors.stop()
