"""The terminal's run views and the run list's query string, on fixed models (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from steplog.projections.read_models import (
    AttemptView,
    ErrorView,
    RunDetail,
    RunListItem,
    RunPage,
    StepView,
)
from steplog.server.read_routes import run_filter
from steplog.server.run_terminal import duration_text, render_run, render_run_list
from steplog.server.web_errors import BadRequest

AT = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


def run_item(status: str = "failed") -> RunListItem:
    return RunListItem(
        run_id="r-1", project="p", flow="checkout", app="", status=status,
        recorded_status=status, created_at=AT, scheduled_for=None, started_at=AT,
        finished_at=AT, duration_ms=1520.0, trigger_event="order.created",
        trigger_event_id="e-1", parent_run_id="", retrigger_of="", step_count=2,
        failed_step_count=1, error=ErrorView(type="ValueError", message="card declined"),
    )


def step(key: str, status: str, attempts: list[AttemptView]) -> StepView:
    return StepView(
        step_key=key, name=key, kind="instrumented", status=status, attempt=len(attempts) or 1,
        started_at=AT, finished_at=AT, duration_ms=12.0, deadline_at=None,
        output={"ok": True} if status == "completed" else None,
        error=ErrorView(type="ValueError", message="card declined", stack="line 1\nline 2")
        if status == "failed" else None,
        attempts=attempts,
    )


def test_a_run_reads_as_a_timeline_with_glyphs_attempts_and_errors() -> None:
    failed = AttemptView(attempt=1, status="failed", started_at=AT, finished_at=AT,
                         duration_ms=5.0, error=ErrorView(type="ValueError", message="card declined"))
    again = failed.model_copy(update={"attempt": 2})
    detail = RunDetail(
        run=run_item(), stuck_after=None, updated_at=AT,
        steps=[step("validate", "completed", []), step("charge", "failed", [failed, again]),
               step("ship", "missing", [])],
        graph=None, parent=None, children=[], retrigger_of=None, retriggers=[],
    )
    text = render_run(detail)
    lines = text.splitlines()
    assert lines[0] == "✗ run r-1  failed"
    assert "trigger order.created (e-1)" in text
    validate = next(line for line in lines if "validate" in line)
    assert validate.startswith("✓ validate") and "12ms" in validate
    assert any(line.startswith("✗ charge") and "(2 attempts)" in line for line in lines)
    assert "    attempt 2: ✗ failed 5ms  ValueError: card declined" in lines
    assert any(line.startswith("? ship") for line in lines)
    assert '      "ok": true' in lines  # the return value, as formatted JSON beneath the row


def test_the_run_list_prints_counts_and_the_cursor_of_older_runs() -> None:
    page = RunPage(runs=[run_item()], next_cursor="abc", counts={"failed": 1, "completed": 4},
                   newest_version="1")
    text = render_run_list(page)
    assert "r-1" in text and "checkout" in text and "order.created" in text
    assert "by status: completed 4, failed 1" in text
    assert text.endswith("older runs: --cursor abc")


@pytest.mark.parametrize(("ms", "shown"), [
    (None, "-"), (12.4, "12ms"), (1520.0, "1.5s"), (125_000.0, "2m05s"), (7_500_000.0, "2h05m"),
])
def test_durations_read_at_a_glance(ms: float | None, shown: str) -> None:
    assert duration_text(ms) == shown


def test_the_query_string_becomes_a_filter() -> None:
    chosen = run_filter({"flow": "checkout", "status": "failed, stuck", "since":
                         "2026-12-06T08:00:00Z", "until": "2026-12-06T09:00:00", "q": "r-1"})
    assert chosen.flow == "checkout" and chosen.status == ("failed", "stuck")
    assert chosen.since == AT and chosen.until == AT.replace(hour=9)
    assert chosen.search == "r-1" and chosen.project is None


@pytest.mark.parametrize(("query", "named"), [
    ({"status": "failed,broken"}, "status='failed,broken': 'broken' is not a run status"),
    ({"since": "yesterday"}, "since='yesterday': expected an ISO 8601 time"),
    ({"flow": "a\x00b"}, "flow="),
    ({"project": "p" * 300}, "project="),
    ({"q": "x" * 300}, "q: 300 characters"),
])
def test_a_malformed_filter_is_named(query: dict[str, str], named: str) -> None:
    with pytest.raises(BadRequest) as raised:
        run_filter(query)
    assert named in raised.value.message
