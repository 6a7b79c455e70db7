"""`steplog dev --demo` in a child process with a data dir and ports of its own, and Debian's
Chromium for Playwright: what the dashboard's browser tests (tests/browser/) and the
screenshots (scripts/screenshots.py) both start.

The stack is the real one the README starts (broker, processors, chDB, the web service with
the built dashboard); the demo fills it with the checkout runs and the durable workflows, and
says "The stack keeps running" once everything it sent has been projected. Nothing of it is
open without a key: the tests use the admin key `steplog dev` made in its data dir.
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import clickhouse_connect
from clickhouse_connect.driver.client import Client as SqlClient
from playwright.sync_api import Browser, Page, Playwright, ViewportSize, expect

from steplog.credentials import admin_key_path, local_admin_key
from steplog.server.broker import LocalBroker
from steplog.settings import Settings, child_environment, env_name, load_settings
from tests.conftest import free_port, wait_for

__all__ = [
    "CHROMIUM", "DEMO_END", "LAPTOP", "PHONE", "DemoRuns", "DemoStack", "demo_stack",
    "launch_chromium",
]

CHROMIUM: Final = Path("/usr/bin/chromium")
"""Debian's build (scripts/install-system-packages.sh): Playwright never downloads a browser."""
DEMO_END: Final = "The stack keeps running"
LAPTOP: Final = ViewportSize(width=1366, height=860)
PHONE: Final = ViewportSize(width=390, height=844)
_START_TIMEOUT_S: Final = 300.0
_STOP_TIMEOUT_S: Final = 120.0


@dataclass(frozen=True)
class DemoRuns:
    """Runs of the demo that show one thing each, found with SQL as an analyst would."""

    failed: str
    """A checkout whose card was declined: charge-card failed at attempt 1."""
    retried: str
    """A checkout whose charge timed out once: charge-card failed at attempt 1, then succeeded."""
    missing_step: str
    """A checkout that never reported validate-cart (a `missing` node on its graph)."""
    workflow: str
    """A durable `order.fulfil` run (retried charge, sleep, wait, child run)."""


@dataclass
class DemoStack:
    settings: Settings
    """The stack's own settings: broker, topics, SQL and web ports, as its child process has them."""
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def admin_key(self) -> str:
        """The admin key `steplog dev` made on its first start (<data dir>/admin.key)."""
        key = local_admin_key(self.settings)
        assert key is not None, f"`steplog dev` wrote no {admin_key_path(self.settings)}"
        return key

    def api(self, path: str) -> Any:
        """GET `path` of the JSON API with the admin key, decoded."""
        request = urllib.request.Request(
            self.base_url + path, headers={"Authorization": f"Bearer {self.admin_key}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def sql(self) -> SqlClient:
        """clickhouse-connect on the stack's SQL endpoint (its chDB files are the stack's), with
        the admin key as the password, as an analyst's client logs in."""
        return clickhouse_connect.get_client(
            host="127.0.0.1", port=self.settings.sql_port,
            database=self.settings.clickhouse_database, password=self.admin_key,
        )

    def demo_runs(self) -> DemoRuns:
        sql = self.sql()
        try:
            def first(what: str, query: str) -> str:
                rows = sql.query(query).result_rows
                assert rows, f"the demo made no {what} run ({query})"
                return str(rows[0][0])

            return DemoRuns(
                failed=first("failed checkout", "SELECT run_id FROM runs_current "
                             "WHERE flow = 'checkout' AND status = 'failed' ORDER BY run_id"),
                retried=first("retried checkout", "SELECT run_id FROM steps_current "
                              "WHERE flow = 'checkout' AND step_key = 'charge-card' "
                              "AND attempt = 2 ORDER BY run_id"),
                # Charged: the hanging reservations (stuck) and a declined card (failed) miss
                # validate-cart too. Such a run stays `running`: its graph is never all done.
                missing_step=first("checkout without validate-cart", "SELECT run_id "
                                   "FROM steps_current WHERE flow = 'checkout' "
                                   "AND step_key = 'validate-cart' AND status = 'missing' "
                                   "AND run_id IN (SELECT run_id FROM steps_current "
                                   "WHERE flow = 'checkout' AND step_key = 'charge-card' "
                                   "AND status = 'completed') ORDER BY run_id"),
                workflow=first("order.fulfil", "SELECT run_id FROM runs_current "
                               "WHERE flow = 'order.fulfil' AND status = 'completed' "
                               "ORDER BY run_id"),
            )
        finally:
            sql.close()

    def stop(self) -> None:
        """SIGTERM (dev stops what it started), SIGKILL to its process group if it hangs; then
        its broker by its data dir, in case dev was killed before it could stop it (the broker
        has a session of its own; the processors die with dev: PR_SET_PDEATHSIG)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever is left in its group
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        base = load_settings()
        port = int(self.settings.kafka_bootstrap.rsplit(":", 1)[1])
        LocalBroker(self.settings.data_dir / "kafka", port, heap=base.broker_heap,
                    version=base.kafka_version, cache_dir=base.cache_dir).stop()


@contextmanager
def demo_stack(directory: Path) -> Iterator[DemoStack]:
    """`steplog dev --demo` on free ports with its data in `directory`, once the demo has
    ended; stopped (process group and broker) on exit."""
    settings = load_settings(
        data_dir=directory / "data", kafka_bootstrap=f"127.0.0.1:{free_port()}",
        sql_port=free_port(), api_port=free_port(), health_port=free_port(),
    )
    log_path = directory / "dev.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "from steplog.server.entry import main; main()", "dev",
             "--demo"],
            # child_environment leaves the API port out (it places no processors' stack).
            env={**child_environment(settings),
                 env_name("api_port"): str(settings.api_port)},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    stack = DemoStack(settings, process, log_path)
    try:
        def demo_ended() -> bool:
            output = stack.output()
            if process.poll() is not None or "demo failed" in output:
                raise AssertionError(f"`steplog dev --demo` failed (exit code "
                                     f"{process.poll()}): {output[-4000:]}")
            return DEMO_END in output

        wait_for(demo_ended, timeout=_START_TIMEOUT_S, what="the demo to end")
        yield stack
    finally:
        stack.stop()


def launch_chromium(playwright: Playwright) -> Browser:
    """Headless Chromium from CHROMIUM; missing, it is an error (the browser tests must run)."""
    if not CHROMIUM.is_file():
        raise AssertionError(f"{CHROMIUM} is missing: run `bash scripts/install-system-packages.sh` "
                             "(or `make setup`), which installs Debian's chromium")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True)


def log_in(page: Page, key: str) -> None:
    """Log in as a person does: the login page, the key, the button; then the run list."""
    page.goto("/login")
    page.get_by_test_id("login-key").fill(key)
    page.get_by_test_id("login-submit").click()
    expect(page).to_have_url(re.compile(r"/runs$"))
