"""The README's Python examples run as written, against the SDK's memory sink where Kafka would
be needed: the names they use are the real API, and they do what the README says they do."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import steplog
from steplog.producers.client import Client
from steplog.producers.sink import MemorySink
from tests.readme import readme_python


@pytest.fixture
def sink(monkeypatch: pytest.MonkeyPatch) -> Iterator[MemorySink]:
    """`steplog.Client(...)` as the README writes it, its events kept in memory."""
    memory = MemorySink()

    def client(*args: Any, **kwargs: Any) -> Client:
        kwargs.setdefault("sink", memory)
        return Client(*args, **kwargs)

    monkeypatch.setattr(steplog, "Client", client)
    yield memory


class Declined(Exception):
    pass


@dataclass
class Customer:
    opted_out: bool


@dataclass
class Cart:
    customer: Customer
    total: int = 42
    receipts: list[int] = field(default_factory=list)


def application_code() -> dict[str, Any]:
    """What the tour's code calls: the service's own functions, as stand-ins."""

    def charge_card(cart: Cart) -> int:
        if cart.total < 0:
            raise Declined("card declined")
        return cart.total

    async def charge_card_async(cart: Cart) -> int:
        return charge_card(cart)

    def send_receipt(cart: Cart, total: int) -> None:
        cart.receipts.append(total)

    async def send_receipt_async(cart: Cart) -> None:
        cart.receipts.append(cart.total)

    return {
        "reserve_stock": lambda cart: None,
        "charge_card": charge_card,
        "charge_card_async": charge_card_async,
        "send_receipt": send_receipt,
        "send_receipt_async": send_receipt_async,
    }


def steps(sink: MemorySink, run_id: str) -> list[tuple[str, str, str]]:
    return [(e.type, getattr(e, "step_key", ""), e.run_id)
            for e in sink.events() if e.run_id == run_id]


def test_the_instrumentation_tour_records_what_the_readme_says(sink: MemorySink) -> None:
    namespace = application_code()
    exec(readme_python("def checkout(cart, request_id)"), namespace)
    checkout, checkout_async = namespace["checkout"], namespace["checkout_async"]

    cart = Cart(Customer(opted_out=False))
    checkout(cart, "req_1")
    assert cart.receipts == [42]
    assert steps(sink, "req_1") == [
        ("step.started", "reserve-stock", "req_1"), ("step.completed", "reserve-stock", "req_1"),
        ("step.started", "charge-card", "req_1"), ("step.completed", "charge-card", "req_1"),
        ("step.started", "send-receipt", "req_1"), ("step.completed", "send-receipt", "req_1"),
    ]

    checkout(Cart(Customer(opted_out=True)), "req_2")
    assert steps(sink, "req_2")[-1] == ("step.skipped", "send-receipt", "req_2")

    declined = Cart(Customer(opted_out=False), total=-1)
    with pytest.raises(Declined, match="card declined"):  # recorded, then re-raised unchanged
        checkout(declined, "req_3")
    failed = [e for e in sink.events() if e.run_id == "req_3" and e.type == "step.failed"]
    assert [(e.step_key, e.payload.error.type) for e in failed] == [("charge-card", "Declined")]
    assert failed[0].payload.error.stack  # capture_stack=True

    asyncio.run(checkout_async(Cart(Customer(opted_out=False)), "req_4"))
    assert [key for kind, key, _ in steps(sink, "req_4") if kind == "step.completed"] == [
        "charge-card", "send-receipt"]

    # The block ends with a step done elsewhere, and a flush.
    assert steps(sink, "req_123") == [("step.completed", "ship", "req_123")]


def test_the_workflow_example_defines_what_the_readme_says(sink: MemorySink) -> None:
    namespace: dict[str, Any] = {"charge_card": None, "fetch_user": None, "fetch_prefs": None}
    exec(readme_python("@app.workflow(\"order.process\""), namespace)
    app = namespace["app"]
    assert isinstance(app, steplog.App) and app.name == "shop"
    [definition] = [d for d in app.definitions() if d.name == "order.process"]
    assert (definition.app, definition.triggers) == ("shop", ["order.placed"])
    assert definition.retries.attempts == 4
    assert set(app.workflows) == {"order.process"}
