"""The dashboard's screenshots in docs/screenshots/, taken on the demo's data.

    .venv/bin/python scripts/screenshots.py

Starts `steplog dev --demo` on free ports and a scratch data dir, as the browser tests do
(tests/browser/stack.py), waits for the demo to end, then photographs each page in headless
Chromium (/usr/bin/chromium) at a laptop's viewport, and the run list at a phone's. The stack
is stopped at the end. The dashboard must be built first (`make setup`).
"""

from __future__ import annotations

import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
# Run as a script, Python puts scripts/ first on the path; the stack code lives in tests/.
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright  # noqa: E402

from tests.browser.stack import (  # noqa: E402
    LAPTOP,
    PHONE,
    DemoRuns,
    demo_stack,
    launch_chromium,
    log_in,
)

OUT: Final = ROOT / "docs" / "screenshots"
Shot = Callable[[Page, DemoRuns], None]


def run_list(page: Page, _: DemoRuns) -> None:
    page.goto("/runs")
    expect(page.get_by_test_id("run-row").first).to_be_visible()


def failed_runs(page: Page, _: DemoRuns) -> None:
    page.goto("/runs?status=failed")
    expect(page.get_by_test_id("run-row").first).to_be_visible()


def open_run(page: Page, run_id: str, view: str) -> None:
    page.goto(f"/runs/{urllib.parse.quote(run_id)}")
    expect(page.get_by_test_id("run-status")).to_be_visible()
    page.get_by_test_id(f"view-{view}").click()


def failed_step(page: Page, runs: DemoRuns) -> None:
    open_run(page, runs.failed, "list")
    page.locator('[data-testid="step-row"][data-status="failed"]').first.click()
    expect(page.get_by_test_id("step-detail")).to_be_visible()


def retried_timeline(page: Page, runs: DemoRuns) -> None:
    open_run(page, runs.retried, "timeline")
    expect(page.get_by_test_id("attempt-bar").first).to_be_visible()


def missing_step_graph(page: Page, runs: DemoRuns) -> None:
    open_run(page, runs.missing_step, "graph")
    expect(page.get_by_test_id("graph-node").first).to_be_visible()


def workflow_graph(page: Page, runs: DemoRuns) -> None:
    open_run(page, runs.workflow, "graph")
    expect(page.get_by_test_id("graph-node").first).to_be_visible()


def ops(page: Page, _: DemoRuns) -> None:
    page.goto("/ops")
    expect(page.get_by_test_id("failures-chart")).to_be_visible()


def dead_letters(page: Page, _: DemoRuns) -> None:
    page.goto("/dead-letters")
    page.wait_for_load_state("networkidle")


SHOTS: Final[list[tuple[str, ViewportSize, Shot]]] = [
    ("runs", LAPTOP, run_list),
    ("runs-failed", LAPTOP, failed_runs),
    ("run-failed-step", LAPTOP, failed_step),
    ("run-timeline-retried", LAPTOP, retried_timeline),
    ("run-graph-missing-step", LAPTOP, missing_step_graph),
    ("workflow-run-graph", LAPTOP, workflow_graph),
    ("ops", LAPTOP, ops),
    ("dead-letters", LAPTOP, dead_letters),
    ("runs-phone", PHONE, run_list),
]


def photograph(browser: Browser, base_url: str, runs: DemoRuns, key: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, viewport, shot in SHOTS:
        context = browser.new_context(base_url=base_url, viewport=viewport)
        try:
            page = context.new_page()
            log_in(page, key)
            shot(page, runs)
            # Charts and the graph's layout draw after their data: let the page go quiet.
            page.wait_for_load_state("networkidle")
            path = OUT / f"{name}.png"
            page.screenshot(path=str(path), animations="disabled")
            print(f"wrote {path.relative_to(ROOT)}", flush=True)
        finally:
            context.close()


def main() -> None:
    expect.set_options(timeout=30_000)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="steplog-screenshots-") as scratch:
        with demo_stack(Path(scratch)) as stack, sync_playwright() as playwright:
            print(f"the demo ended after {time.perf_counter() - began:.0f}s; dashboard on "
                  f"{stack.base_url}", flush=True)
            browser = launch_chromium(playwright)
            try:
                photograph(browser, stack.base_url, stack.demo_runs(), stack.admin_key)
            finally:
                browser.close()


if __name__ == "__main__":
    main()
