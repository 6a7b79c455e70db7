"""Health tells the truth: `steplog status` fails within its bound, naming the reason, for a
projection write stall, a hung SQL endpoint and a growing lag, and never hangs on a process
that does not answer (real broker, processors and engine)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from steplog.projections.clickhouse import OWNER_FILE, chdb_path
from steplog.settings import Settings, child_environment
from tests.conftest import RunningProcessors, start_processors, wait_for
from tests.integration.test_cli import steplog
from tests.integration.test_sql_cli import send_step_events

WRITE_STALL_S = 3.0
LAG_GROWTH_S = 4.0
CHECK_TIMEOUT_S = 2.0


@pytest.fixture
def watched(stack_settings: Settings, tmp_path: Path) -> Iterator[RunningProcessors]:
    """Processors with small health bounds."""
    settings = stack_settings.model_copy(update={
        "write_stall_s": WRITE_STALL_S, "lag_growth_s": LAG_GROWTH_S, "lag_sample_s": 0.5,
        "check_timeout_s": CHECK_TIMEOUT_S,
    })
    running = start_processors(settings, tmp_path / "processors.log")
    try:
        yield running
    finally:
        for pid in (running.process.pid, store_pid(settings)):
            try:
                os.kill(pid, signal.SIGCONT)
            except (ProcessLookupError, TypeError):
                pass
        running.stop()


def store_pid(settings: Settings) -> int:
    path = chdb_path(settings.clickhouse_dsn)
    assert path is not None
    return int((path / OWNER_FILE).read_text().split()[0])


def status(settings: Settings) -> dict[str, str]:
    """`steplog status`'s lines by check name; it must answer well within its own timeouts."""
    began = time.monotonic()
    result = steplog("status", env=child_environment(settings, every_setting=True))
    took = time.monotonic() - began
    assert took < 4 * CHECK_TIMEOUT_S + 10, f"status took {took:.1f}s: {result.stdout}"
    lines = {line.split()[1]: line for line in result.stdout.splitlines()}
    assert (result.returncode == 0) == all(line.startswith("ok ") for line in lines.values())
    return lines


@contextmanager
def events_arriving(settings: Settings) -> Iterator[None]:
    """Step events sent every 100 ms, until the block ends."""
    stop = threading.Event()

    def send() -> None:
        while not stop.wait(0.1):
            send_step_events(settings, 1)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join(timeout=60)


@contextmanager
def stopped(pid: int) -> Iterator[float]:
    """SIGSTOP the process for the block (yields when it was stopped), SIGCONT after."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        os.kill(pid, signal.SIGCONT)


def status_until(
    settings: Settings, holds: Callable[[dict[str, str]], bool], *, timeout: float, what: str
) -> dict[str, str]:
    """`steplog status` run until its lines satisfy `holds`; the last lines."""
    seen: list[dict[str, str]] = []

    def check() -> bool:
        seen.append(status(settings))
        return holds(seen[-1])

    try:
        wait_for(check, timeout=timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last status: {seen[-1:]}") from None
    return seen[-1]


def healthy(lines: dict[str, str]) -> bool:
    return all(line.startswith("ok ") for line in lines.values())


def test_status_names_a_write_stall_and_a_hung_sql_endpoint_then_recovers(
    watched: RunningProcessors,
) -> None:
    settings = watched.settings
    lines = status_until(settings, healthy, timeout=120, what="a healthy stack")
    assert "projection writes: succeeding" in lines["health"]

    with events_arriving(settings), stopped(store_pid(settings)) as since:
        # The engine does not answer: a write is under way for ever, and SELECT 1 hangs.
        lines = status_until(settings, lambda lines: "one write under way" in lines["health"],
                             timeout=WRITE_STALL_S + 20, what="a write stall reported")
        assert time.monotonic() - since >= WRITE_STALL_S
        assert lines["health"].startswith("FAIL") and "projection writes" in lines["health"]
        assert lines["sql"].startswith("FAIL"), lines
        assert f"did not answer SELECT 1 within {CHECK_TIMEOUT_S:g}s" in lines["sql"], lines

    status_until(settings, healthy, timeout=60, what="health back once the engine answers")


def test_status_names_a_growing_lag_of_stopped_processors_without_hanging(
    watched: RunningProcessors,
) -> None:
    settings = watched.settings
    status_until(settings, healthy, timeout=120, what="a healthy stack")

    with events_arriving(settings), stopped(watched.process.pid) as since:
        lines = status_until(settings, lambda lines: lines["lag"].startswith("FAIL"),
                             timeout=LAG_GROWTH_S + 20, what="the lag reported")
        assert time.monotonic() - since >= LAG_GROWTH_S
        assert "has not been 0 for over" in lines["lag"], lines
        # The stopped process's endpoint: a failure naming it, within the timeout.
        assert lines["health"].startswith("FAIL") and "did not answer within" in lines["health"]

    status_until(settings, healthy, timeout=60, what="health back once the processors run")


def test_the_health_endpoint_reports_growing_lag_while_writes_stall(
    stack_settings: Settings, tmp_path: Path
) -> None:
    """The processors' own lag trend (not status's look at the log): writes stalled, so
    nothing is committed while events arrive."""
    settings = stack_settings.model_copy(update={
        "write_stall_s": 600.0, "lag_growth_s": LAG_GROWTH_S, "lag_sample_s": 0.5,
    })
    running = start_processors(settings, tmp_path / "processors.log")
    store = store_pid(settings)
    try:
        def endpoint() -> dict[str, object]:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{settings.health_port}/health", timeout=5
                ) as answer:
                    return dict(json.load(answer))
            except urllib.error.HTTPError as failing:
                return dict(json.load(failing))

        with events_arriving(settings), stopped(store):
            wait_for(lambda: any(c["name"] == "lag" and not c["healthy"]
                                 for c in endpoint()["checks"]),  # type: ignore[attr-defined]
                     timeout=LAG_GROWTH_S + 20, what="the endpoint's lag check to fail")
            answer = endpoint()
            assert answer["healthy"] is False
            details = {c["name"]: c["detail"] for c in answer["checks"]}  # type: ignore[attr-defined]
            assert "grew from" in details["lag"]
    finally:
        os.kill(store, signal.SIGCONT)
        running.stop()
