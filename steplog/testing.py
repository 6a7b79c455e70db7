"""Unit tests of workflows, in-process, without Kafka or ClickHouse (README, "Testing
workflows"): the public face of `steplog.producers.testing`, and its pytest fixture.

    from steplog.testing import WorkflowTest

    def test_order_is_charged_then_settled():
        run = WorkflowTest(app).run("order.process", {"id": 7})
        assert run.result() == {...}

With pytest, load the fixture in the project's top-level conftest.py and say which app is tested:

    pytest_plugins = ["steplog.testing"]

    @pytest.fixture
    def steplog_app():
        from shop.workflows import app
        return app

Then a test asks for `workflow_test`: a fresh `WorkflowTest` of that app (its own clock, mocks
and events), so tests do not share any. Importing this module imports pytest: only tests do.
"""

from __future__ import annotations

import pytest

from steplog.producers.testing import StepMock, TestedApp, TestedRun, WorkflowTest

__all__ = ["StepMock", "TestedApp", "TestedRun", "WorkflowTest", "workflow_test"]


@pytest.fixture
def workflow_test(steplog_app: TestedApp) -> WorkflowTest:
    """A `WorkflowTest` of the app the `steplog_app` fixture gives."""
    return WorkflowTest(steplog_app)
