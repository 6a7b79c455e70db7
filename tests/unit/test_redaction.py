"""Secrets are kept out of the log by one rule set on every path: JSON values at any depth,
events posted over HTTP, and the extra key patterns of STEPLOG_REDACT_KEYS."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from steplog.errors import SettingsError
from steplog.redaction import (
    BUILT_IN_RULES,
    REDACTED,
    SecretRules,
    parse_key_patterns,
    secret_rules,
)
from steplog.schemas.codec import validate_event
from steplog.settings import load_settings

CARD = "4111 1111 1111 1111"


def _step_event(event_type: str, payload: dict[str, Any]) -> Any:
    return validate_event({
        "event_id": "e-1", "type": event_type, "project": "shop", "flow": "checkout",
        "run_id": "r-1", "attempt": 1, "ts": datetime(2026, 1, 1, tzinfo=UTC), "seq": 1,
        "step_key": "charge", "payload": payload,
    })


def test_nested_secret_keys_and_card_numbers_are_redacted_at_any_depth() -> None:
    value = {
        "user": {"name": "ada", "password": {"hash": "x"}},
        "cards": [{"number": CARD}, "order 12"],
        "apiKey": 42,
    }

    assert BUILT_IN_RULES.redact_json(value) == {
        "user": {"name": "ada", "password": REDACTED},
        "cards": [{"number": REDACTED}, "order 12"],
        "apiKey": REDACTED,
    }


def test_a_value_without_secrets_is_returned_as_the_same_object() -> None:
    value = {"order": {"items": [1, 2, "three"]}, "prompt_tokens": 12}

    assert BUILT_IN_RULES.redact_json(value) is value


def test_redacting_does_not_change_the_callers_value() -> None:
    value = {"inner": {"token": "abc"}}

    BUILT_IN_RULES.redact_json(value)

    assert value == {"inner": {"token": "abc"}}


@pytest.mark.parametrize(
    ("pattern", "secret", "not_secret"),
    [
        ("ssn", "customer_ssn", "lessons"),
        ("ssn", "SSN", "ssnoop"),
        ("date_of_birth", "dateOfBirth", "birth_date"),
        ("date-of-birth", "customer.date_of_birth", "date"),
    ],
)
def test_extra_patterns_match_whole_words_whatever_the_spelling(
    pattern: str, secret: str, not_secret: str
) -> None:
    rules = SecretRules(parse_key_patterns(pattern))

    assert rules.is_secret_key(secret)
    assert not rules.is_secret_key(not_secret)
    assert rules.is_secret_key("password")  # the built-in rules still apply


def test_extra_patterns_are_read_from_the_setting() -> None:
    rules = secret_rules(load_settings(redact_keys="ssn, iban").redact_keys)

    assert rules.redact_json({"iban": "DE89", "ssn": 1, "name": "x"}) == {
        "iban": REDACTED, "ssn": REDACTED, "name": "x",
    }
    assert secret_rules("") is BUILT_IN_RULES


def test_a_pattern_with_nothing_to_match_is_a_settings_error_naming_it() -> None:
    with pytest.raises(SettingsError, match=r"STEPLOG_REDACT_KEYS.*'--'"):
        load_settings(redact_keys="ssn, --")


def test_an_ingested_step_started_has_its_metadata_and_input_redacted() -> None:
    event = _step_event("step.started", {
        "kind": "run", "input": {"card": CARD, "qty": 2},
        "metadata": {"password": "hunter2", "order_id": "o-1"},
    })

    clean: Any = BUILT_IN_RULES.redact_event(event)

    assert clean.payload.metadata == {"password": REDACTED, "order_id": "o-1"}
    assert clean.payload.input == {"card": REDACTED, "qty": 2}
    assert event.payload.metadata["password"] == "hunter2"  # the original is untouched


def test_an_ingested_step_completed_has_its_output_redacted() -> None:
    event = _step_event("step.completed", {"output": {"session_token": "t"}})

    clean: Any = BUILT_IN_RULES.redact_event(event)

    assert clean.payload.output == {"session_token": REDACTED}


def test_an_event_without_secrets_is_returned_unchanged() -> None:
    event = _step_event("step.failed", {
        "error": {"type": "ValueError", "message": "no"}, "metadata": {"attempted": 2},
    })

    assert BUILT_IN_RULES.redact_event(event) is event
