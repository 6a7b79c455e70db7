"""`steplog dev` on a secured local broker (STEPLOG_BROKER_SECURE=true): the one command still
brings the stack up, every client of it logging in to Kafka as the broker's admin, whose
credentials the broker keeps in its data dir; a client without them is refused."""

from __future__ import annotations

import signal
from pathlib import Path

from steplog.server.sql_http import sql_endpoint_answers
from tests.conftest import start_dev, wait_for
from tests.integration.test_cli import steplog


def test_dev_on_a_secured_broker_logs_its_clients_in(tmp_path: Path) -> None:
    started = start_dev(tmp_path, STEPLOG_BROKER_SECURE="true")
    dev, data_dir, kafka_port, sql_port = (
        started.process, started.data_dir, started.kafka_port, started.sql_port
    )
    try:
        # The SQL endpoint answers once the store has read the keys topic (over SASL) and dev
        # has minted its admin key through it.
        wait_for(lambda: dev.poll() is None and sql_endpoint_answers(sql_port), timeout=120,
                 what="the secured stack's SQL endpoint")
        wait_for(lambda: (data_dir / "admin.key").exists(), timeout=60, what="the admin key")
        answer = steplog("sql", "SELECT 41 + 1 AS n", "-f", "csv",
                         env={"STEPLOG_DATA_DIR": str(data_dir),
                              "STEPLOG_SQL_PORT": str(sql_port)})
        assert answer.returncode == 0, answer.stdout + answer.stderr
        assert answer.stdout.splitlines() == ["n", "42"]
        credentials = data_dir / "kafka" / "admin.credentials"
        assert credentials.stat().st_mode & 0o777 == 0o600

        plain = steplog("topics", "ensure", env={
            "STEPLOG_DATA_DIR": str(data_dir),
            "STEPLOG_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_port}",
        })
        assert plain.returncode == 2, plain.stdout + plain.stderr
        assert "STEPLOG_KAFKA_SECURITY_PROTOCOL" in plain.stderr
        assert "Traceback" not in plain.stderr and len(plain.stderr.splitlines()) <= 3
    finally:
        dev.send_signal(signal.SIGTERM)
        try:
            dev.wait(timeout=90)
        finally:
            started.stop()
