"""An app: the workflows one group of workers serves.

    app = steplog.App("shop")

    @app.workflow("order.process", triggers=["order.placed"], retries=steplog.Retries(attempts=3))
    async def process_order(ctx):
        ...

    app.worker().run()

The app's name is the workers' consumer group and what commands are addressed to; its project
stamps every event its runs write. A worker registers each workflow when it starts (a
`workflow.defined` on the flows topic, a `trigger.registered` per trigger on the signals
topic), which is how the processors learn which app runs a name and which names start runs.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import ValidationError

from steplog.errors import WorkflowError
from steplog.schemas.base import new_event_id
from steplog.schemas.flows import RetryPolicy, WorkflowDefinition
from steplog.schemas.limits import KEY_SEGMENT_PATTERN, NAME_MAX_CHARS
from steplog.schemas.signals import TriggerRegistered
from steplog.settings import Settings, load_settings

from .context import WorkflowFunction
from .worker import Worker
from .workflow import Workflow

__all__ = ["App", "Retries", "Workflow", "load_app"]

Retries = RetryPolicy
"""How a failing step is retried: `Retries(attempts=3, initial_delay_ms=50)`; the defaults are
RetryPolicy's (4 attempts, about 3 s, 1 min and 5 min apart, with jitter)."""

F = TypeVar("F", bound=WorkflowFunction)


class App:
    """A named group of workflows, served by `app.worker()`.

    - name: the app (no "/"); workers of one app share the commands addressed to it.
    - project: stamped on every event of its runs; default STEPLOG_PROJECT.
    - settings: Kafka and topics; default `load_settings()` (read when first needed).
    - retries: the default retry policy of its workflows.
    """

    def __init__(
        self,
        name: str,
        *,
        project: str | None = None,
        settings: Settings | None = None,
        retries: RetryPolicy | None = None,
    ) -> None:
        self._settings = settings
        self.name = name
        self.project = project if project is not None else self.settings.project
        self.retries = retries or RetryPolicy()
        self._workflows: dict[str, Workflow] = {}
        # Checked here, not at the first worker start: the same rules as the definition's.
        _check_segment("App name", name)
        _check_segment("project", self.project)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def workflows(self) -> Mapping[str, Workflow]:
        """The app's workflows by name."""
        return MappingProxyType(self._workflows)

    def workflow(
        self,
        name: str | None = None,
        *,
        triggers: Iterable[str] = (),
        retries: RetryPolicy | None = None,
    ) -> Callable[[F], F]:
        """Register an `async def fn(ctx)` as workflow `name` (default: the function's name).

        triggers: signal names that each start a run (`ctx.event` is the signal).
        retries: the retry policy of its steps (default: the app's).
        The function is returned unchanged.
        """
        if isinstance(triggers, str):
            raise WorkflowError(
                f"triggers: {triggers!r} is a string; expected a list of event names, "
                f"e.g. triggers=[{triggers!r}]"
            )
        trigger_names = tuple(triggers)

        def register(fn: F) -> F:
            workflow_name = name or str(getattr(fn, "__name__", ""))
            is_async = inspect.iscoroutinefunction(fn)
            if not is_async:
                raise WorkflowError(
                    f"workflow {workflow_name!r}: expected an async function "
                    f"(async def {workflow_name}(ctx): ...), got {fn!r}"
                )
            if workflow_name in self._workflows:
                raise WorkflowError(
                    f"workflow {workflow_name!r} is already registered in app {self.name!r}"
                )
            workflow = Workflow(workflow_name, fn, trigger_names, retries or self.retries)
            try:
                workflow.definition(self.project, self.name)  # the wire rules, checked now
            except ValidationError as exc:
                raise WorkflowError(f"workflow {workflow_name!r}: {_first_problem(exc)}") from None
            self._workflows[workflow_name] = workflow
            return fn

        return register

    def definitions(self) -> list[WorkflowDefinition]:
        """What a worker registers on the flows topic at start, one per workflow."""
        return [w.definition(self.project, self.name) for w in self._workflows.values()]

    def trigger_registrations(self) -> list[TriggerRegistered]:
        """What a worker registers on the signals topic at start, one per trigger."""
        now = datetime.now(UTC)
        return [
            TriggerRegistered(
                event_id=new_event_id(),
                project=self.project,
                name=trigger,
                app=self.name,
                workflow=workflow.name,
                ts=now,
            )
            for workflow in self._workflows.values()
            for trigger in workflow.triggers
        ]

    def worker(self, *, settings: Settings | None = None, **options: Any) -> Worker:
        """A worker for this app (see `Worker` for the options: concurrency, ...)."""
        return Worker(self, settings=settings, **options)

    def __repr__(self) -> str:
        return f"App({self.name!r}, project={self.project!r}, workflows={list(self._workflows)})"


def load_app(target: str) -> App:
    """The App at `target`, "MODULE:ATTRIBUTE" (e.g. "shop.workflows:app"), imported the way
    `python -c "import MODULE"` would from the current directory."""
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise WorkflowError(
            f"{target!r}: expected MODULE:APP, e.g. shop.workflows:app (the module's import "
            "path, a colon, and the name of the steplog.App in it)"
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise WorkflowError(
                f"{target!r}: no module named {exc.name!r} (from {os.getcwd()}); run from the "
                "directory the module is imported from, or install its package"
            ) from None
        raise
    found: object = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise WorkflowError(f"{target!r}: module {module_name!r} has no {attribute!r}")
        found = getattr(found, part)
    if not isinstance(found, App):
        raise WorkflowError(
            f"{target!r} is a {type(found).__name__}, not a steplog.App "
            "(app = steplog.App(\"name\"))"
        )
    return found


def _check_segment(what: str, value: object) -> None:
    # schemas.limits.KeySegment: it becomes part of a key that '/' separates.
    if (not isinstance(value, str) or len(value) > NAME_MAX_CHARS
            or not re.fullmatch(KEY_SEGMENT_PATTERN, value)):
        raise WorkflowError(
            f"{what}: {value!r} is not usable; expected 1 to {NAME_MAX_CHARS} characters "
            "without '/' or control characters"
        )


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]
