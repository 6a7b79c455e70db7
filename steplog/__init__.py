"""Steplog: durable workflows and run/step observability on an event log.

Services emit step events with the SDK; they land on Kafka, are folded into run and step state,
and are projected into ClickHouse for SQL. Importing this package stays cheap: the SDK is
imported by services on their hot path, the server side only by the CLI.

    import steplog
    client = steplog.Client(project="shop")
    run = client.run("checkout", run_id="req_123")
    total = run.step("charge-card", charge_card, cart)

Durable workflows:

    app = steplog.App("shop")

    @app.workflow("order.process", triggers=["order.placed"], retries=steplog.Retries(attempts=3))
    async def process_order(ctx):
        charge = await ctx.step.run("charge", charge_card, input=ctx.event.data)
        await ctx.step.sleep("settle", "1h")
        return {"charge": charge}

    app.worker().run()

    run = client.start("order.process", {"id": 7}, app=app.name)   # elsewhere: a RunHandle
    output = run.result(timeout=60)     # {"charge": ...}, or RunFailedError / RunCancelledError
"""

# The SDK only: pydantic, aiokafka and the standard library; never faust, ClickHouse or typer.
from typing import TYPE_CHECKING, Any

from steplog.errors import (
    ChildRunFailedError,
    NonDeterminismError,
    NonRetriableError,
    ResultTimeoutError,
    RunCancelledError,
    RunFailedError,
    StepFailedError,
)
from steplog.producers.client import Client
from steplog.producers.run_results import RunHandle

if TYPE_CHECKING:
    from steplog.producers.app import App, Retries
    from steplog.producers.context import WorkflowContext

# The workflow side is imported when first used: a service that only instruments its code
# does not pay for it.
_LAZY = {
    "App": "steplog.producers.app",
    "Retries": "steplog.producers.app",
    "WorkflowContext": "steplog.producers.context",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'steplog' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "App",
    "ChildRunFailedError",
    "Client",
    "NonDeterminismError",
    "NonRetriableError",
    "ResultTimeoutError",
    "Retries",
    "RunCancelledError",
    "RunFailedError",
    "RunHandle",
    "StepFailedError",
    "WorkflowContext",
]

__version__ = "0.1.0"
