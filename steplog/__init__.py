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

# Everything is imported when first used: `import steplog.schemas.events` (a consumer of the
# wire format in another service, a tool) imports this package first, and must not load the
# SDK's Kafka client with it; a service that only instruments its code does not pay for the
# workflow side either. The SDK itself needs pydantic, aiokafka and the standard library; never
# faust, ClickHouse or typer.
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steplog.errors import (
        ChildRunFailedError,
        NonDeterminismError,
        NonRetriableError,
        ResultTimeoutError,
        RunCancelledError,
        RunExpiredError,
        RunFailedError,
        StepFailedError,
    )
    from steplog.producers.app import App, Concurrency, Debounce, RateLimit, Retries, Throttle
    from steplog.producers.client import Client
    from steplog.producers.context import WorkflowContext
    from steplog.producers.run_results import RunHandle
    from steplog.schemas.flows import CancelOn

_LAZY = {
    "App": "steplog.producers.app",
    "CancelOn": "steplog.schemas.flows",
    "ChildRunFailedError": "steplog.errors",
    "Client": "steplog.producers.client",
    "Concurrency": "steplog.producers.app",
    "Debounce": "steplog.producers.app",
    "NonDeterminismError": "steplog.errors",
    "NonRetriableError": "steplog.errors",
    "RateLimit": "steplog.producers.app",
    "ResultTimeoutError": "steplog.errors",
    "Retries": "steplog.producers.app",
    "RunCancelledError": "steplog.errors",
    "RunExpiredError": "steplog.errors",
    "RunFailedError": "steplog.errors",
    "RunHandle": "steplog.producers.run_results",
    "StepFailedError": "steplog.errors",
    "Throttle": "steplog.producers.app",
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
    "CancelOn",
    "ChildRunFailedError",
    "Client",
    "Concurrency",
    "Debounce",
    "NonDeterminismError",
    "NonRetriableError",
    "RateLimit",
    "ResultTimeoutError",
    "Retries",
    "RunCancelledError",
    "RunExpiredError",
    "RunFailedError",
    "RunHandle",
    "StepFailedError",
    "Throttle",
    "WorkflowContext",
]

__version__ = "0.1.0"
