"""Step metadata: secrets and card numbers never leave the process; limits are refused at the
call site with an error naming the key, its size and the limit."""

from __future__ import annotations

import math
from enum import IntEnum, StrEnum

import pytest

from steplog.errors import MetadataError
from steplog.producers.metadata import (
    MAX_KEY_CHARS,
    MAX_KEYS,
    MAX_STRING_CHARS,
    REDACTED,
    clean_metadata,
    contains_card_number,
    is_secret_key,
)


@pytest.mark.parametrize(
    "key",
    [
        "authorization",
        "Authorization",
        "Proxy-Authorization",
        "password",
        "db_password",
        "PASSWD",
        "client_secret",
        "secretKey",
        "token",
        "access_token",
        "refreshToken",
        "id-token",
        "X-Auth-Token",
        "api_key",
        "apikey",
        "api-key",
        "x-api-key",
        "X_API_KEY",
        "APIKey",
        "api key",
        "cookie",
        "Set-Cookie",
        "session_id",
        "sessionId",
        "SESSION-ID",
        "private_key",
        "privateKey",
        "card_number",
        "cardNumber",
        "credit_card",
        "creditCardNumber",
        "card_no",
        "cvv",
        "CVC",
        "card_cvv",
        "aws_secret_access_key",
    ],
)
def test_keys_naming_secrets_are_redacted_whatever_the_case_and_separators(key: str) -> None:
    assert is_secret_key(key)
    assert clean_metadata({key: "s3cr3t-value", "order_id": "ord_1"}) == {
        key: REDACTED,
        "order_id": "ord_1",
    }


@pytest.mark.parametrize(
    "key",
    [
        "order_id",
        "user_id",
        "status_code",
        "http_status",
        "items",
        "prompt_tokens",
        "max_tokens",
        "region",
        "card_notes",
        "svc_vcs",
        "oauth_provider",
        "attempts_left",
    ],
)
def test_ordinary_diagnostic_keys_are_kept(key: str) -> None:
    assert not is_secret_key(key)
    assert clean_metadata({key: "value"}) == {key: "value"}


@pytest.mark.parametrize(
    "value",
    [
        "4111111111111111",
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "card 5500 0000 0000 0004 was declined",
        "378282246310005",  # 15 digits (Amex)
        "6011111111111117",
        "6222020000000000000",  # 19 digits (UnionPay length), Luhn-valid
    ],
)
def test_string_values_containing_a_card_number_are_redacted(value: str) -> None:
    assert contains_card_number(value)
    assert clean_metadata({"note": value}) == {"note": REDACTED}


@pytest.mark.parametrize(
    "value",
    [
        "4111111111111112",  # fails the Luhn check
        "ord_1042",
        "123456789012",  # 12 digits: too short
        "12345678901234567890",  # 20 digits: too long, and not part of a card
        "2025-03-14T09:26:53Z",
        "+1 415 555 0100",
    ],
)
def test_values_without_a_card_number_are_kept(value: str) -> None:
    assert not contains_card_number(value)
    assert clean_metadata({"note": value}) == {"note": value}


def test_numbers_are_never_treated_as_card_numbers() -> None:
    # Only strings are scanned: an int is a count or an id the caller chose to send as such.
    assert clean_metadata({"amount_cents": 4111111111111111}) == {"amount_cents": 4111111111111111}


def test_scalars_pass_through_and_the_input_is_not_modified() -> None:
    given = {"s": "x", "i": 3, "big": 2**70, "f": 0.25, "t": True, "f0": False, "n": None}
    cleaned = clean_metadata(given)
    assert cleaned == given and cleaned is not given
    given_with_secret = {"token": "abc"}
    clean_metadata(given_with_secret)
    assert given_with_secret == {"token": "abc"}


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf, float("1e400")])
def test_nan_and_infinity_are_refused_naming_the_key(number: float) -> None:
    # JSON has neither: recording null would be a value the caller never gave.
    with pytest.raises(MetadataError) as caught:
        clean_metadata({"ok": 1.5, "ratio": number})
    assert caught.value.key == "ratio" and "finite" in caught.value.problem


def test_enum_members_become_their_plain_values() -> None:
    class Color(StrEnum):
        RED = "red"

    class Level(IntEnum):
        HIGH = 3

    cleaned = clean_metadata({"color": Color.RED, "level": Level.HIGH})
    assert cleaned == {"color": "red", "level": 3}
    assert type(cleaned["color"]) is str and type(cleaned["level"]) is int


def test_empty_or_missing_metadata_is_an_empty_dict() -> None:
    assert clean_metadata(None) == {}
    assert clean_metadata({}) == {}


def test_too_many_keys_is_refused_naming_the_count_and_limit() -> None:
    clean_metadata({f"k{i}": i for i in range(MAX_KEYS)})
    with pytest.raises(MetadataError) as caught:
        clean_metadata({f"k{i}": i for i in range(MAX_KEYS + 1)})
    assert f"{MAX_KEYS + 1} keys" in str(caught.value) and str(MAX_KEYS) in str(caught.value)


def test_a_long_key_is_refused_naming_its_length_and_the_limit() -> None:
    clean_metadata({"k" * MAX_KEY_CHARS: 1})
    with pytest.raises(MetadataError) as caught:
        clean_metadata({"k" * (MAX_KEY_CHARS + 1): 1})
    message = str(caught.value)
    assert f"{MAX_KEY_CHARS + 1} characters" in message and str(MAX_KEY_CHARS) in message


def test_a_long_string_value_is_refused_naming_the_key_its_size_and_the_limit() -> None:
    clean_metadata({"note": "x" * MAX_STRING_CHARS})
    with pytest.raises(MetadataError) as caught:
        clean_metadata({"note": "x" * (MAX_STRING_CHARS + 1)})
    assert caught.value.key == "note"
    assert f"{MAX_STRING_CHARS + 1} characters" in caught.value.problem
    assert str(MAX_STRING_CHARS) in caught.value.problem
    assert "'note'" in str(caught.value)


def test_a_long_secret_is_redacted_not_refused() -> None:
    # Its value is dropped anyway; a long bearer token is not the caller's size problem.
    assert clean_metadata({"authorization": "Bearer " + "x" * 5000}) == {
        "authorization": REDACTED
    }


@pytest.mark.parametrize(
    ("metadata", "key", "fragment"),
    [
        ({"payload": {"nested": 1}}, "payload", "dict"),
        ({"ids": [1, 2]}, "ids", "list"),
        ({"when": object()}, "when", "object"),
        ({"": 1}, "", "empty"),
    ],
)
def test_values_that_are_not_flat_scalars_are_refused(
    metadata: dict[str, object], key: str, fragment: str
) -> None:
    with pytest.raises(MetadataError) as caught:
        clean_metadata(metadata)
    assert caught.value.key == key
    assert fragment in caught.value.problem


def test_non_string_keys_are_refused() -> None:
    with pytest.raises(MetadataError, match="keys must be strings"):
        clean_metadata({1: "x"})  # type: ignore[dict-item]
