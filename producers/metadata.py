"""Step metadata: checked against its limits and stripped of secrets before it leaves the process.

Metadata is shown on the dashboard and stored in ClickHouse for as long as the log is kept, so
what must never be in it (credentials, payment card data) is removed here, in the process that
produced it, not downstream where it would already sit in Kafka:

- a key that names a secret (authorization, password, token, api key, cookie, session id,
  private key, card number, cvv, ...) keeps the key and gets the value "[REDACTED]";
- a string value that contains a payment card number (13 to 19 digits, optionally grouped by
  spaces or dashes, passing the Luhn check) is replaced by "[REDACTED]" whatever its key.

Limits are refused, not truncated: metadata is written by the programmer at the call site, so a
key too many or a 5 kB value is a programming error that should surface in development, where
it is raised (MetadataError naming the key, its size and the limit) before the step's code runs.

`clean_metadata` is a pure function: no I/O, no clock, the same answer for the same input.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

from steplog.errors import MetadataError
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
REDACTED: Final = "[REDACTED]"

# Phrases matched anywhere inside the key with case and separators removed ("X-Api-Key" ->
# "xapikey"), so that every spelling of a multi-word name is caught. Only long, distinctive
# phrases: a false match costs a redacted diagnostic, a missed one leaks a credential.
_SECRET_PHRASES: Final = (
    "authorization",
    "password",
    "passwd",
    "passphrase",
    "secret",
    "credential",
    "apikey",
    "accesskey",
    "privatekey",
    "cookie",
    "sessionid",
    "sessionkey",
    "cardnumber",
    "cardnum",
    "creditcard",
    "ccnumber",
)
# Short names match whole words, or adjacent words run together ("card_no", "sess-id"): as
# phrases, "cvc" would catch "svc_vcs" and "cardno" would catch "card_notes".
_SECRET_WORDS: Final = frozenset(
    {"auth", "bearer", "jwt", "pin", "cvv", "cvv2", "cvc", "cvc2", "csc", "cardno", "sessid", "sid"}
)
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
# Candidate card numbers: 13-19 digits, single spaces or dashes allowed between them, not part
# of a longer run of digits. The Luhn check then sorts out most ids and timestamps.
_CARD_CANDIDATE = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
_KEY_VERDICTS_MAX: Final = 4096
_key_verdicts: dict[str, bool] = {}


def clean_metadata(metadata: Mapping[str, object] | None) -> dict[str, MetadataValue]:
    """A copy of `metadata` that is safe to send, or MetadataError naming what is wrong.

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
        if is_secret_key(key):
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


def is_secret_key(key: str) -> bool:
    """Whether a metadata key names something secret; case- and separator-insensitive."""
    verdict = _key_verdicts.get(key)
    if verdict is None:
        verdict = _judge_key(key)
        # Keys are usually literals at the call sites, so a small cache makes the check free
        # after the first call; bounded, because a key built from data would grow it forever.
        if len(_key_verdicts) < _KEY_VERDICTS_MAX:
            _key_verdicts[key] = verdict
    return verdict


def _judge_key(key: str) -> bool:
    words = [word.lower() for word in _WORDS.findall(key)]
    joined = "".join(words)
    if any(phrase in joined for phrase in _SECRET_PHRASES):
        return True
    for start, word in enumerate(words):
        # token, access_token, refreshToken, x-auth-token, idtoken; but not prompt_tokens (a
        # count, and common metadata in LLM services).
        if word.endswith("token"):
            return True
        for end in range(start + 1, min(start + 3, len(words)) + 1):
            if "".join(words[start:end]) in _SECRET_WORDS:
                return True
    return False


def contains_card_number(text: str) -> bool:
    """Whether `text` contains a payment card number (13-19 digits passing the Luhn check)."""
    if len(text) < 13:
        return False
    for match in _CARD_CANDIDATE.finditer(text):
        # The whole candidate only: trying every 13-19 digit window inside a longer number
        # would redact most long ids (each window passes Luhn one time in ten).
        if _luhn_valid([int(c) for c in match.group() if c != " " and c != "-"]):
            return True
    return False


def _luhn_valid(digits: list[int]) -> bool:
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0
