"""`steplog otel-export`'s settings (steplog/server/otel_export.py): bad ones fail at start-up
naming the variable, and a header's value (often a credential) is never echoed."""

from __future__ import annotations

import pytest

from steplog.errors import SettingsError
from steplog.server.otel_export import otlp_exporter, parse_headers
from steplog.settings import load_settings


def test_headers_are_url_decoded_key_value_pairs() -> None:
    assert parse_headers("authorization=Bearer%20s3cret, x-team = shop") == {
        "authorization": "Bearer s3cret", "x-team": "shop"
    }


def test_a_header_without_a_value_names_the_variable_not_the_secret() -> None:
    with pytest.raises(SettingsError, match="STEPLOG_OTEL_HEADERS.*entry 2 ") as raised:
        parse_headers("authorization=Bearer%20s3cret,Bearer-only-token")
    assert "s3cret" not in str(raised.value) and "only-token" not in str(raised.value)


@pytest.mark.parametrize("endpoint, expected", [
    ("", "STEPLOG_OTEL_ENDPOINT is not set"),
    ("127.0.0.1:4318/v1/traces", "STEPLOG_OTEL_ENDPOINT: expected an http"),
])
def test_the_endpoint_must_be_an_http_url(endpoint: str, expected: str) -> None:
    with pytest.raises(SettingsError, match=expected):
        otlp_exporter(load_settings(otel_endpoint=endpoint))
