"""The README's main job, `steplog dev --demo`, end to end: its own broker, tables, processors
and SQL endpoint; the instrumented checkout service and the durable workflows; every query
printed with real results; everything stopped at the end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from steplog.analyst_queries import ANALYST_QUERIES
from steplog.settings import load_settings
from steplog.workflow_demo import ORDERS, WORKFLOW_QUERIES
from tests.conftest import free_port, processors_environment


def test_the_demo_runs_both_halves_and_prints_every_query(tmp_path: Path) -> None:
    environment = processors_environment(load_settings(data_dir=tmp_path / "data"))
    environment = {k: v for k, v in environment.items() if not k.startswith("STEPLOG_")}
    result = subprocess.run(
        [sys.executable, "-c", "from steplog.entry import main; main()", "dev", "--demo",
         "--exit-after-demo", "--data-dir", str(tmp_path / "data"),
         "--kafka-port", str(free_port()), "--sql-port", str(free_port())],
        env=environment, capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "demo failed" not in output, output[-4000:]
    assert "302 checkout runs sent" in output and ", 0 dropped" in output
    assert f"{ORDERS} order.packed events sent" in output
    for title, _ in [(query.title, query.sql) for query in ANALYST_QUERIES] + list(WORKFLOW_QUERIES):
        assert f"-- {title}" in output
    fulfilled = [line for line in output.splitlines() if "order.fulfil" in line and "completed" in line]
    assert any(f"│ {ORDERS} " in line for line in fulfilled), output[-3000:]
