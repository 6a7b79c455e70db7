"""Steplog: durable workflows and run/step observability on an event log.

Services emit step events with the SDK; they land on Kafka, are folded into run and step state,
and are projected into ClickHouse for SQL. Importing this package stays cheap: the SDK is
imported by services on their hot path, the server side only by the CLI.
"""

__version__ = "0.1.0"
