"""The dashboard in a real browser on the real stack (`steplog dev --demo`, tests/browser/
conftest.py): what an operator clicks through, asserted against what the demo made and what
the JSON API answers.

The pages are found by the selectors agreed with the front end (data-testid, data-status,
data-step-key, ...), never by layout or wording, so that restyling does not break the tests.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from steplog.producers.app import App
from steplog.producers.client import Client
from steplog.producers.context import WorkflowContext
from steplog.schemas.statuses import RunStatus, StepStatus
from steplog.server.workflow_demo import BackgroundWorker
from tests.browser.conftest import Pages
from tests.browser.stack import PHONE, DemoRuns, DemoStack
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

NAPPING_APP = "browser-test"


def rows(page: Page) -> Locator:
    return page.get_by_test_id("run-row")


def status_text(status: str) -> re.Pattern[str]:
    return re.compile(rf"\b{re.escape(status)}\b", re.IGNORECASE)


def step_rows(page: Page, step_key: str, status: str | None = None) -> Locator:
    selector = f'[data-testid="step-row"][data-step-key="{step_key}"]'
    return page.locator(selector + (f'[data-status="{status}"]' if status else ""))


def open_run(page: Page, run_id: str) -> None:
    page.goto(f"/runs/{urllib.parse.quote(run_id)}")
    expect(page.get_by_test_id("run-status")).to_be_visible()


def test_the_failed_chip_lists_only_failed_runs_and_a_failed_run_shows_its_failed_attempt(
    page: Page, stack: DemoStack
) -> None:
    page.goto("/runs")
    expect(rows(page).first).to_be_visible()
    counts = stack.api("/v1/runs")["counts"]
    failed_chip = page.get_by_test_id("status-filter-failed")
    expect(failed_chip.get_by_test_id("status-count")).to_have_text(
        re.compile(rf"\b{counts['failed']}\b"))

    failed_chip.click()
    expect(page).to_have_url(re.compile(r"[?&]status=failed(&|$)"))
    expect(page.locator('[data-testid="run-row"]:not([data-status="failed"])')).to_have_count(0)
    expect(rows(page).first).to_be_visible()
    failed_ids = {run["run_id"] for run in stack.api("/v1/runs?status=failed&limit=200")["runs"]}
    shown = [row.get_attribute("data-run-id") for row in rows(page).all()]
    assert shown and set(shown) <= failed_ids, (shown, failed_ids)

    first = rows(page).first
    run_id = first.get_attribute("data-run-id")
    assert run_id is not None
    first.get_by_role("link", name=run_id).click()
    expect(page).to_have_url(re.compile(rf"/runs/{re.escape(urllib.parse.quote(run_id))}"))
    expect(page.get_by_test_id("run-status")).to_have_text(status_text(RunStatus.FAILED))

    # A declined card: charge-card failed; its detail opens on a click and shows the error.
    failed_step = step_rows(page, "charge-card", StepStatus.FAILED)
    expect(failed_step).to_have_count(1)
    failed_step.click()
    expect(page.get_by_test_id("step-detail")).to_contain_text("card declined")

    page.get_by_test_id("view-timeline").click()
    bars = page.locator('[data-testid="attempt-bar"][data-step-key="charge-card"]')
    expect(bars).to_have_count(1)
    expect(bars).to_have_attribute("data-status", StepStatus.FAILED)


def test_the_timeline_shows_both_attempts_of_a_retried_charge(
    page: Page, stack: DemoStack, demo_runs: DemoRuns
) -> None:
    open_run(page, demo_runs.retried)
    page.get_by_test_id("view-timeline").click()
    bars = page.locator('[data-testid="attempt-bar"][data-step-key="charge-card"]')
    expect(bars).to_have_count(2)
    expect(bars.nth(0)).to_have_attribute("data-attempt", "1")
    expect(bars.nth(0)).to_have_attribute("data-status", StepStatus.FAILED)
    expect(bars.nth(1)).to_have_attribute("data-attempt", "2")
    expect(bars.nth(1)).to_have_attribute("data-status", StepStatus.COMPLETED)


def test_the_graph_marks_a_step_the_run_never_reported_as_missing(
    page: Page, stack: DemoStack, demo_runs: DemoRuns
) -> None:
    open_run(page, demo_runs.missing_step)
    page.get_by_test_id("view-graph").click()
    node = page.locator('[data-testid="graph-node"][data-step-key="validate-cart"]')
    expect(node).to_have_attribute("data-status", StepStatus.MISSING)
    for key in ("reserve-stock", "charge-card"):
        expect(page.locator(f'[data-testid="graph-node"][data-step-key="{key}"]')
               ).to_have_attribute("data-status", StepStatus.COMPLETED)


def test_a_workflow_run_links_to_its_child_run(
    page: Page, stack: DemoStack, demo_runs: DemoRuns
) -> None:
    [child] = stack.api(f"/v1/runs/{demo_runs.workflow}")["children"]
    open_run(page, demo_runs.workflow)
    link = page.get_by_test_id("child-link")
    expect(link).to_have_count(1)
    link.click()
    expect(page).to_have_url(re.compile(rf"/runs/{re.escape(child['run_id'])}"))
    expect(page.get_by_test_id("run-status")).to_have_text(status_text(RunStatus.COMPLETED))


def napping_app(stack: DemoStack) -> App:
    app = App(NAPPING_APP, settings=stack.settings)

    @app.workflow("nap.long")
    async def nap(ctx: WorkflowContext) -> Any:
        await ctx.step.sleep("nap", "1h")
        return "rested"

    return app


def run_detail(stack: DemoStack, run_id: str) -> Any:
    """The run's detail, or None while the API does not know it yet."""
    try:
        return stack.api(f"/v1/runs/{urllib.parse.quote(run_id)}")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def test_cancelling_a_sleeping_workflow_run_from_its_page(
    page: Page, stack: DemoStack
) -> None:
    with BackgroundWorker(napping_app(stack)), Client(settings=stack.settings) as client:
        run_id = str(client.start("nap.long", {"why": "browser test"}, app=NAPPING_APP))

        def napping() -> bool:
            detail = run_detail(stack, run_id)
            return detail is not None and any(
                step["step_key"] == "nap" for step in detail["steps"])

        wait_for(napping, timeout=60, what=f"run {run_id} to be sleeping")
        open_run(page, run_id)
        expect(page.get_by_test_id("run-status")).to_have_text(status_text(RunStatus.RUNNING))

        page.get_by_test_id("action-cancel").click()
        expect(page.get_by_test_id("confirm-dialog")).to_be_visible()
        page.get_by_test_id("confirm-yes").click()
        expect(page.get_by_test_id("action-result")).to_be_visible()

        def shows_cancelled() -> bool:
            status = page.get_by_test_id("run-status")
            if status.is_visible() and status_text(RunStatus.CANCELLED).search(
                    status.inner_text()):
                return True
            page.reload()
            status.wait_for()
            return False

        wait_for(shows_cancelled, timeout=60, what=f"run {run_id}'s page to say cancelled")
        assert run_detail(stack, run_id)["run"]["status"] == RunStatus.CANCELLED


def test_the_ops_page_flags_the_demos_burst_of_declined_cards(
    page: Page, stack: DemoStack
) -> None:
    ops = stack.api("/v1/ops")
    assert ops["spike"]["flagged"], ops["spike"]  # a burst of failures with no baseline
    page.goto("/ops")
    expect(page.get_by_test_id("spike-flag")).to_have_attribute("data-flagged", "true")
    expect(page.get_by_test_id("failures-chart")).to_be_visible()
    expect(page.get_by_test_id("alerts")).to_be_visible()  # GET /v1/alerts answered
    expect(page.get_by_test_id("stuck-count")).to_have_text(
        re.compile(rf"\b{ops['stuck_count']}\b"))
    expect(page.get_by_test_id("error-banner")).to_have_count(0)


def test_an_unknown_run_is_not_found_with_status_404(page: Page) -> None:
    response = page.goto("/runs/no-such-run-4b1d")
    assert response is not None and response.status == 404
    expect(page.get_by_test_id("not-found")).to_be_visible()


def test_the_run_list_fits_a_phone_without_horizontal_scrolling(pages: Pages) -> None:
    page = pages.open(PHONE)
    page.goto("/runs")
    expect(rows(page).first).to_be_visible()
    widths = page.evaluate(
        "() => [document.scrollingElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page scrolls sideways: {widths[0]}px in {widths[1]}px"


def test_tab_reaches_the_status_chips_and_enter_applies_one(page: Page) -> None:
    page.goto("/runs")
    expect(rows(page).first).to_be_visible()
    target = "status-filter-failed"
    for _ in range(80):
        page.keyboard.press("Tab")
        focused = page.evaluate("() => document.activeElement?.getAttribute('data-testid')")
        if focused == target:
            break
    else:
        raise AssertionError(f"80 presses of Tab never focused {target}")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"[?&]status=failed(&|$)"))
    expect(page.locator('[data-testid="run-row"]:not([data-status="failed"])')).to_have_count(0)


def test_a_browser_without_a_session_logs_in_and_returns_to_the_page_it_asked_for(
    pages: Pages, stack: DemoStack
) -> None:
    page = pages.open(logged_in=False)
    page.goto("/runs?status=failed")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fruns%3Fstatus%3Dfailed$"))

    page.get_by_test_id("login-key").fill("slk_sk_000000000000_" + "x" * 43)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("unknown or revoked key")

    page.get_by_test_id("login-key").fill(stack.admin_key)
    page.get_by_test_id("login-submit").click()
    expect(page).to_have_url(re.compile(r"/runs\?status=failed$"))
    expect(rows(page).first).to_be_visible()
    me = stack.api("/v1/me")
    expect(page.get_by_test_id("whoami")).to_have_text(
        re.compile(rf"{re.escape(me['key_id'])}.*\badmin\b"))

    page.get_by_test_id("logout").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/ops")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fops$"))
