"""Signed records (schemas/record_signing.py) and the checks the processors apply to them, in
their order (processors/record_checks.py)."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from steplog.errors import InvalidEventError
from steplog.processors.record_checks import KnownKeys, RecordChecks, check_signed_record
from steplog.schemas.keys import KeyRecord
from steplog.schemas.record_signing import (
    KEY_HEADER,
    MAC_HEADER,
    SIGNING_CONTEXT,
    RecordSigner,
    derive_signing_key,
    read_signature,
    record_mac,
)
from steplog.server.key_ring import mint_key

TOPIC = "steplog.events"
VALUE = b'{"type":"step.running","project":"a"}'
LOGGED_MS = int(datetime(2026, 1, 2, tzinfo=UTC).timestamp() * 1000)


def _key(role: str = "ingest", projects: list[str] | None = None) -> tuple[RecordSigner, KeyRecord]:
    secret, record = mint_key(role, projects if role != "admin" else None)
    return RecordSigner.of_secret(secret), record


def test_the_signing_key_is_an_hmac_of_the_secret_and_the_record_holds_it() -> None:
    secret, record = mint_key("ingest", ["a"])
    assert derive_signing_key(secret) == hmac.digest(secret.encode(), SIGNING_CONTEXT, "sha256")
    assert record.signing_key == derive_signing_key(secret).hex()


def test_headers_name_the_key_and_mac_the_topic_and_value() -> None:
    signer, _ = _key()
    headers = signer.headers(TOPIC, VALUE)
    assert [name for name, _ in headers] == [KEY_HEADER, MAC_HEADER]
    key_id, mac = read_signature(headers) or ("", b"")
    assert key_id == signer.key_id
    assert mac == record_mac(signer.signing_key, TOPIC, VALUE)
    assert signer.matches(TOPIC, VALUE, mac)
    assert not signer.matches("steplog.signals", VALUE, mac)
    assert not signer.matches(TOPIC, VALUE + b" ", mac)


def test_a_record_missing_either_header_is_unsigned() -> None:
    signer, _ = _key()
    key_header, mac_header = signer.headers(TOPIC, VALUE)
    assert read_signature([key_header]) is None
    assert read_signature([mac_header]) is None
    assert read_signature(None) is None


def test_a_malformed_secret_cannot_sign() -> None:
    with pytest.raises(ValueError, match="not a Steplog key"):
        RecordSigner.of_secret("hunter2")


def test_signing_costs_a_couple_of_microseconds() -> None:
    signer, _ = _key()
    value = VALUE * 10  # about 400 bytes, a typical event
    rounds = 20_000
    began = time.perf_counter()
    for _ in range(rounds):
        signer.headers(TOPIC, value)
    per_record_us = (time.perf_counter() - began) / rounds * 1e6
    assert per_record_us < 10, f"{per_record_us:.2f} µs per record"


def _refusal(
    headers: list[tuple[str, bytes]] | None, keys: list[KeyRecord], project: str = "a",
    value: bytes = VALUE,
) -> str | None:
    try:
        check_signed_record(TOPIC, value, headers, LOGGED_MS, project, KnownKeys(keys))
    except InvalidEventError as exc:
        return exc.problem
    return None


def test_a_record_signed_by_a_key_of_its_project_passes() -> None:
    signer, record = _key(projects=["a"])
    assert _refusal(signer.headers(TOPIC, VALUE), [record]) is None
    admin, admin_record = _key("admin")
    assert _refusal(admin.headers(TOPIC, VALUE), [admin_record], project="b") is None


def test_the_rules_refuse_in_order_naming_the_key_and_project() -> None:
    signer, record = _key("read", ["b"])
    signed = signer.headers(TOPIC, VALUE)
    revoked_before = record.model_copy(update={
        "role": "ingest", "projects": ["a"],
        "revoked_at": datetime.fromtimestamp(LOGGED_MS / 1000, UTC),
    })
    cases = [
        # Each case fails every later rule too: the reason is the first rule's.
        (None, [record], "unsigned record for project 'a'"),
        (signed, [], f"unknown key (key {signer.key_id!r}, project 'a')"),
        (signed, [record.model_copy(update={"signing_key": None})], "make a new key"),
        (signer.headers(TOPIC, VALUE + b"x"), [record], "signature does not match"),
        (signed, [record], f"a read key cannot write (key {signer.key_id!r}, project 'a')"),
        (signed, [record.model_copy(update={"role": "ingest"})],
         "key does not cover the record's project"),
        (signed, [revoked_before], "key revoked at 2026-01-02T00:00:00+00:00, at or before"),
    ]
    for headers, keys, reason in cases:
        refused = _refusal(headers, keys)
        assert refused is not None and reason in refused, (reason, refused)


def test_a_key_revoked_after_the_record_was_logged_passes() -> None:
    signer, record = _key(projects=["a"])
    later = datetime.fromtimestamp(LOGGED_MS / 1000, UTC) + timedelta(milliseconds=1)
    assert _refusal(signer.headers(TOPIC, VALUE), [record.revoked(later)]) is None


@dataclass
class _Consumed:
    value: bytes
    headers: list[tuple[str, bytes]]
    timestamp: int
    topic: str = TOPIC
    partition: int = 0
    offset: int = 0
    key: bytes | None = None


class _CatchingUp(KnownKeys):
    def __init__(self, records: list[KeyRecord]) -> None:
        super().__init__(records)
        self.caught_up_to: list[int] = []

    async def catch_up(self, logged_ms: int) -> None:
        self.caught_up_to.append(logged_ms)


def test_a_batch_is_judged_once_the_keys_are_read_up_to_its_newest_signed_record() -> None:
    signer, record = _key(projects=["a"])
    keys = _CatchingUp([record])
    batch = [
        _Consumed(VALUE, signer.headers(TOPIC, VALUE), LOGGED_MS),
        _Consumed(VALUE, [], LOGGED_MS + 5),  # unsigned: refused whatever the keys
        _Consumed(VALUE, signer.headers(TOPIC, VALUE), LOGGED_MS + 2),
    ]
    asyncio.run(RecordChecks(keys).prepare(batch))
    asyncio.run(RecordChecks(keys).prepare(batch[1:2]))
    assert keys.caught_up_to == [LOGGED_MS + 2]
