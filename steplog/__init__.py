"""Steplog: durable workflows and run/step observability on an event log.

Services emit step events with the SDK; they land on Kafka, are folded into run and step state,
and are projected into ClickHouse for SQL. Importing this package stays cheap: the SDK is
imported by services on their hot path, the server side only by the CLI.

    import steplog
    client = steplog.Client(project="shop")
    run = client.run("checkout", run_id="req_123")
    total = run.step("charge-card", charge_card, cart)
"""

# The SDK only: pydantic, aiokafka and the standard library; never faust, ClickHouse or typer.
from steplog.producers.client import Client

__all__ = ["Client"]

__version__ = "0.1.0"
