"""Conditions (steplog/expressions.py): CEL, with `and` / `or` / `not`, safe and total."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from pydantic import JsonValue

from steplog.errors import ExpressionError
from steplog.expressions import MAX_CONDITION_CHARS, compile_condition

NAMES = ("event",)
PAID: dict[str, JsonValue] = {"event": {"name": "order.paid", "data": {"amount": 150, "currency": "EUR"}}}


def holds(text: str, variables: Mapping[str, JsonValue] = PAID) -> bool:
    return compile_condition(text, field="if_", names=NAMES).matches(variables)


def test_the_issues_example_holds_as_written_and_in_cel_spelling() -> None:
    assert holds("event.data.amount > 100 and event.data.currency == 'EUR'")
    assert holds("event.data.amount > 100 && event.data.currency == 'EUR'")
    assert not holds("event.data.amount > 200 or event.data.currency == 'USD'")
    assert holds("not has(event.data.refund) && event.data.currency in ['EUR', 'USD']")


def test_words_inside_strings_and_after_a_dot_are_not_operators() -> None:
    variables: dict[str, JsonValue] = {"event": {"data": {"and": "rock and roll", "or": 1}}}
    assert holds("event.data.and == 'rock and roll' and event.data.or == 1", variables)


def test_a_missing_field_a_type_error_or_a_non_boolean_result_does_not_hold() -> None:
    assert not holds("event.data.refund > 1")
    assert not holds("event.data.currency > 1")
    assert not holds("event.data.amount / 0 == 1")
    assert not holds("event.data.amount")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("event.data.amount >", "'event.data.amount >' is not a valid condition"),
        ("os.system('rm -rf /') == 0", "uses 'os'; a condition can use only 'event'"),
        ("", "expected a condition"),
        ("x" * (MAX_CONDITION_CHARS + 1), f"at most {MAX_CONDITION_CHARS}"),
    ],
)
def test_a_bad_condition_is_refused_naming_the_argument(text: str, expected: str) -> None:
    with pytest.raises(ExpressionError, match="^if_: ") as refused:
        compile_condition(text, field="if_", names=NAMES)
    assert expected in str(refused.value)
