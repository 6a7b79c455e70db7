"""Every Kafka client Steplog makes is made here: one place for what they all share.

The clients are aiokafka's, as the callers know them; these functions only fill in what every
client of ours has in common (the bootstrap servers and a client id that says which part of
Steplog it is, visible in the broker's logs and in `describe_groups`), so that a setting all
clients need (a timeout, later TLS or SASL) is added once. Callers pass their own options
(acks, group, fetch sizes, ...) by aiokafka's names.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

__all__ = ["admin_client", "consumer", "producer"]

_CLIENT_ID = "steplog"


def consumer(bootstrap: str, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer of `topics` (none: assign or subscribe later)."""
    options.setdefault("client_id", _CLIENT_ID)
    return AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, **options)


def producer(bootstrap: str, **options: Any) -> AIOKafkaProducer:
    options.setdefault("client_id", _CLIENT_ID)
    return AIOKafkaProducer(bootstrap_servers=bootstrap, **options)


def admin_client(bootstrap: str, **options: Any) -> AIOKafkaAdminClient:
    options.setdefault("client_id", _CLIENT_ID)
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
