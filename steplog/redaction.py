"""Secrets kept out of the log: one rule set for every path that writes into it.

The events topic is kept for as long as replay needs it (forever by default) and is copied into
ClickHouse and onto the dashboard, so what must never be in it (credentials, payment card data)
is removed before an event is produced, by the same rules on every path:

- the SDK's step metadata (`producers.metadata.clean_metadata`, which also checks its limits);
- `Client.record_step` (metadata and output) and `run.step(..., record_output=True)`;
- a workflow step's recorded input and output (`producers.step_run`);
- events posted to the ingest API (`redact_event`, called by `steplog.server.ingest`).

The rules:

- a key that names a secret (authorization, password, token, api key, cookie, session id,
  private key, card number, cvv, ..., plus the patterns of STEPLOG_REDACT_KEYS) keeps the key
  and gets the value "[REDACTED]", whatever the value (a string, a number, a whole object);
- a string value that contains a payment card number (13 to 19 digits, optionally grouped by
  spaces or dashes, passing the Luhn check) is replaced by "[REDACTED]" whatever its key.

Objects and arrays are walked to any depth. What is returned is what is written, so a value
redacted here is gone: a workflow step's output is also what later passes of its run replay,
which is why `producers.step_run` warns when it redacts one (module doc there).

Everything here is pure: no I/O, no clock, the same answer for the same input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Final

from steplog.schemas.events import (
    RunEvent,
    StepCompleted,
    StepEvent,
    StepFailed,
    StepSkipped,
    StepStarted,
)

__all__ = [
    "BUILT_IN_RULES",
    "REDACTED",
    "SecretRules",
    "contains_card_number",
    "is_secret_key",
    "parse_key_patterns",
    "secret_rules",
]

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
# phrases, "cvc" would catch "svc_vcs" and "cardno" would catch "card_notes". The patterns of
# STEPLOG_REDACT_KEYS are matched the same way.
_SECRET_WORDS: Final = frozenset(
    {"auth", "bearer", "jwt", "pin", "cvv", "cvv2", "cvc", "cvc2", "csc", "cardno", "sessid", "sid"}
)
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
# Candidate card numbers: 13-19 digits, single spaces or dashes allowed between them, not part
# of a longer run of digits. The Luhn check then sorts out most ids and timestamps.
_CARD_CANDIDATE = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
_KEY_VERDICTS_MAX: Final = 4096

def parse_key_patterns(text: str) -> tuple[str, ...]:
    """The patterns of a STEPLOG_REDACT_KEYS value ("ssn, date_of_birth"), each as the words
    it is matched by, run together in lower case ("ssn", "dateofbirth"); ValueError naming a
    pattern with no letter or digit in it."""
    patterns = []
    for raw in text.split(","):
        if not raw.strip():
            continue
        words = _words(raw)
        if not words:
            raise ValueError(f"key pattern {raw.strip()!r} has no letter or digit to match")
        patterns.append("".join(words))
    return tuple(patterns)


class SecretRules:
    """The built-in rules plus extra key patterns (whole words, case and separators ignored:
    "ssn" redacts `customer_ssn`, `SSN` and `ssnLast4`, not `lessons`)."""

    def __init__(self, extra_key_patterns: Iterable[str] = ()) -> None:
        self.extra_key_patterns = tuple(extra_key_patterns)
        self._words = _SECRET_WORDS | frozenset(self.extra_key_patterns)
        self._longest_word = max(len(word) for word in self._words)
        self._verdicts: dict[str, bool] = {}

    def is_secret_key(self, key: str) -> bool:
        """Whether a key names something secret; case- and separator-insensitive."""
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._judge_key(key)
            # Keys are usually literals at the call sites, so a small cache makes the check
            # free after the first call; bounded, because keys built from data would grow it.
            if len(self._verdicts) < _KEY_VERDICTS_MAX:
                self._verdicts[key] = verdict
        return verdict

    def redact_json(self, value: Any) -> Any:
        """`value` (JSON: dicts, lists, scalars; tuples read as lists) with every secret
        replaced by REDACTED; the very same object when nothing in it is secret."""
        if isinstance(value, str):
            return REDACTED if contains_card_number(value) else value
        if isinstance(value, dict):
            copy: dict[Any, Any] | None = None
            for key, item in value.items():
                if isinstance(key, str) and self.is_secret_key(key):
                    clean: Any = REDACTED
                else:
                    clean = self.redact_json(item)
                if clean is not item:
                    if copy is None:
                        copy = dict(value)
                    copy[key] = clean
            return value if copy is None else copy
        if isinstance(value, (list, tuple)):
            items = [self.redact_json(item) for item in value]
            if all(new is old for new, old in zip(items, value)):
                return value
            return items
        return value

    def redact_event(self, event: StepEvent | RunEvent) -> StepEvent | RunEvent:
        """A step event with its metadata, recorded input and output redacted (the same
        object when nothing was secret). Run events are returned as they are: their input is
        what a run's every pass is given, and is not a diagnostic to trim."""
        if isinstance(event, StepStarted):
            payload: Any = event.payload
            fields = {"input": payload.input, "metadata": payload.metadata}
        elif isinstance(event, StepCompleted):
            payload = event.payload
            fields = {"output": payload.output, "metadata": payload.metadata}
        elif isinstance(event, (StepFailed, StepSkipped)):
            payload = event.payload
            fields = {"metadata": payload.metadata}
        else:
            return event
        changed = {name: clean for name, value in fields.items()
                   if (clean := self.redact_json(value)) is not value}
        if not changed:
            return event
        # model_copy skips validation, which the redacted values do not need: REDACTED is a
        # short string, valid wherever a string, a number or an object was.
        return event.model_copy(update={"payload": payload.model_copy(update=changed)})

    def _judge_key(self, key: str) -> bool:
        words = _words(key)
        joined = "".join(words)
        if any(phrase in joined for phrase in _SECRET_PHRASES):
            return True
        for start, word in enumerate(words):
            # token, access_token, refreshToken, x-auth-token, idtoken; but not prompt_tokens
            # (a count, and common metadata in LLM services).
            if word.endswith("token"):
                return True
            run = ""
            for following in words[start:]:
                run += following
                if len(run) > self._longest_word:
                    break
                if run in self._words:
                    return True
        return False


BUILT_IN_RULES: Final = SecretRules()


@lru_cache(maxsize=16)
def secret_rules(redact_keys: str) -> SecretRules:
    """The rules for a STEPLOG_REDACT_KEYS value (settings.redact_keys), one object per value
    so that its cache of verdicts is shared by every caller in the process."""
    patterns = parse_key_patterns(redact_keys)
    return SecretRules(patterns) if patterns else BUILT_IN_RULES


def is_secret_key(key: str) -> bool:
    """Whether a key names something secret by the built-in rules."""
    return BUILT_IN_RULES.is_secret_key(key)


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


def _words(text: str) -> list[str]:
    return [word.lower() for word in _WORDS.findall(text)]


def _luhn_valid(digits: list[int]) -> bool:
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0
