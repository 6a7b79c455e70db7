"""The README's main job, `steplog dev --demo`, end to end: its own broker, tables, processors
and SQL endpoint; the instrumented checkout service and the durable workflows; every query
printed with real results; everything stopped at the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from steplog.projections.queries import ANALYST_QUERIES
from steplog.server.broker import LocalBroker
from steplog.settings import load_settings
from steplog.server.workflow_demo import ORDERS, WORKFLOW_QUERIES
from tests.conftest import free_port


def test_the_demo_runs_both_halves_and_prints_every_query(tmp_path: Path) -> None:
    data_dir, kafka_port = tmp_path / "data", free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
    try:
        result = subprocess.run(
            [sys.executable, "-c", "from steplog.server.entry import main; main()", "dev", "--demo",
             "--exit-after-demo", "--data-dir", str(data_dir),
             "--kafka-port", str(kafka_port), "--sql-port", str(free_port())],
            env=environment, capture_output=True, text=True, timeout=600,
        )
    finally:
        # `steplog dev` stops the broker it started; if it was killed (the timeout), its broker
        # would outlive the test: stop it by its data dir (a no-op when it is gone already).
        base = load_settings()
        LocalBroker(data_dir / "kafka", kafka_port, heap=base.broker_heap,
                    version=base.kafka_version, cache_dir=base.cache_dir).stop()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "demo failed" not in output, output[-4000:]
    assert "302 checkout runs sent" in output and ", 0 dropped" in output
    assert f"{ORDERS} order.packed events sent" in output
    titles = [query.title for query in ANALYST_QUERIES] + [title for title, _ in WORKFLOW_QUERIES]
    for title in titles:
        assert f"-- {title}" in output
    fulfilled = [line for line in output.splitlines()
                 if "order.fulfil" in line and "completed" in line]
    assert any(f"│ {ORDERS} " in line for line in fulfilled), output[-3000:]
