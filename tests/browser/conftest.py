"""One real stack for the dashboard's browser tests: `steplog dev --demo` (tests/browser/stack.py)
started once for the module, Chromium through Playwright, a fresh browser context a test.

Chromium missing is a failure, never a skip. A page that throws (an uncaught error in the
app) fails the test that opened it. A page opens logged in (the login page, with the stack's
admin key) unless the test asks otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Error,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)

from tests.browser.stack import (
    LAPTOP,
    DemoRuns,
    DemoStack,
    demo_stack,
    launch_chromium,
    log_in,
)
from tests.conftest import announce

# Pages fetch from the API and ClickHouse behind it: a few seconds is normal under the suite.
expect.set_options(timeout=15_000)


# Module scope, not session: the stack (a broker, processors, chDB) and Playwright's event loop
# end with the browser tests rather than outlive them through the rest of the suite.
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[DemoStack]:
    with demo_stack(tmp_path_factory.mktemp("dashboard")) as running:
        announce(pytestconfig, f"\n`steplog dev --demo` serving the dashboard on {running.base_url}, "
                 f"log in {running.log_path}")
        yield running


@pytest.fixture(scope="module")
def demo_runs(stack: DemoStack) -> DemoRuns:
    return stack.demo_runs()


@pytest.fixture(scope="module")
def browser(stack: DemoStack) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


class Pages:
    """Opens pages in contexts of their own, remembering what the app threw in any of them."""

    def __init__(self, browser: Browser, stack: DemoStack) -> None:
        self.browser, self.stack = browser, stack
        self.errors: list[Error] = []
        self._contexts: list[BrowserContext] = []

    def open(self, viewport: ViewportSize = LAPTOP, *, logged_in: bool = True) -> Page:
        context = self.browser.new_context(base_url=self.stack.base_url, viewport=viewport)
        self._contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(error))
        if logged_in:
            log_in(page, self.stack.admin_key)
        return page

    def close(self) -> None:
        for context in self._contexts:
            context.close()


@pytest.fixture
def pages(browser: Browser, stack: DemoStack) -> Iterator[Pages]:
    """Pages for one test; the test fails if the app threw an uncaught error in one."""
    opened = Pages(browser, stack)
    try:
        yield opened
    finally:
        opened.close()
    assert not opened.errors, f"the dashboard threw: {[str(error) for error in opened.errors]}"


@pytest.fixture
def page(pages: Pages) -> Page:
    """A page at the laptop viewport."""
    return pages.open()
