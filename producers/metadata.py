"""Step metadata: checked against its limits and stripped of secrets before it leaves the process.

Metadata is shown on the dashboard and stored in ClickHouse for as long as the log is kept, so
what must never be in it (credentials, payment card data) is removed here, in the process that
produced it, not downstream where it would already sit in Kafka, by the rules every path into
the log shares (`steplog.redaction`: secret-naming keys, card numbers, STEPLOG_REDACT_KEYS).

Limits are refused, not truncated: metadata is written by the programmer at the call site, so a
key too many or a 5 kB value is a programming error that should surface in development, where
it is raised (MetadataError naming the key, its size and the limit) before the step's code runs.

`clean_metadata` is a pure function: no I/O, no clock, the same answer for the same input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from steplog.errors import MetadataError
from steplog.redaction import (
    BUILT_IN_RULES,
    REDACTED,
    SecretRules,
    contains_card_number,
    is_secret_key,
)
from steplog.schemas.limits import METADATA_MAX_KEY_CHARS as MAX_KEY_CHARS
from steplog.schemas.limits import METADATA_MAX_KEYS as MAX_KEYS
from steplog.schemas.limits import METADATA_MAX_STRING_CHARS as MAX_STRING_CHARS

__all__ = [
    "MAX_KEYS",
    "MAX_KEY_CHARS",
    "MAX_STRING_CHARS",
    "REDACTED",
    "MetadataValue",
    "clean_metadata",
    "contains_card_number",
    "is_secret_key",
]

MetadataValue = str | int | float | bool | None

# MAX_KEYS, MAX_KEY_CHARS and MAX_STRING_CHARS are the wire's limits (`schemas.limits`), which
# the processors enforce too: checked here so that the caller hears of them, not a dead letter.
# REDACTED, is_secret_key and contains_card_number are steplog.redaction's, named here too
# because this module is where the SDK's users have always found them.


def clean_metadata(
    metadata: Mapping[str, object] | None, rules: SecretRules = BUILT_IN_RULES
) -> dict[str, MetadataValue]:
    """A copy of `metadata` that is safe to send (redacted by `rules`), or MetadataError naming
    what is wrong.

    Values must be str, int, float, bool or None (flat diagnostics: ids, counts, status codes).
    NaN and infinities are refused: JSON has neither, and writing null would record a value
    the caller did not give.
    """
    if not metadata:
        return {}
    if not isinstance(metadata, Mapping):
        raise MetadataError("", f"expected a mapping of str to scalars, got {type(metadata).__name__}")
    if len(metadata) > MAX_KEYS:
        raise MetadataError("", f"{len(metadata)} keys, over the limit of {MAX_KEYS}")
    cleaned: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise MetadataError(str(key), f"keys must be strings, got {type(key).__name__}")
        if not key:
            raise MetadataError(key, "keys must not be empty")
        if len(key) > MAX_KEY_CHARS:
            raise MetadataError(
                key[:40] + "...", f"key is {len(key)} characters, over the limit of {MAX_KEY_CHARS}"
            )
        if rules.is_secret_key(key):
            # Before the value's own checks: a long bearer token is not a size problem, the
            # value is dropped anyway.
            cleaned[key] = REDACTED
            continue
        cleaned[key] = _clean_value(key, value)
    return cleaned


def _clean_value(key: str, value: object) -> MetadataValue:
    # Exact types first (the common case); subclasses (StrEnum, IntEnum, numpy-free bools) are
    # reduced to the plain value so that the wire shows what the dashboard would print.
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        text = value if type(value) is str else str.__str__(value)
        if len(text) > MAX_STRING_CHARS:
            raise MetadataError(
                key,
                f"value is {len(text)} characters, over the limit of {MAX_STRING_CHARS}; "
                "metadata is for ids, counts and status codes, not documents",
            )
        return REDACTED if contains_card_number(text) else text
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return value if type(value) is int else int(value)
    if isinstance(value, float):
        number = float(value)
        if not math.isfinite(number):
            raise MetadataError(
                key, f"value {number!r} is not a finite number; JSON has no NaN or Infinity"
            )
        return number
    raise MetadataError(
        key,
        f"value of type {type(value).__name__} is not allowed; expected str, int, float, bool "
        "or None (send ids, counts and status codes, not objects)",
    )
