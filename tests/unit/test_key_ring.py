"""The key ring's pure logic: minting, verifying, revoking, and what each role grants."""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import get_args

import pytest

from steplog.schemas.keys import KeyRecord, KeyRole, key_id_of_secret, secret_digest
from steplog.server.key_ring import KeyRing, KeysError, mint_key, parse_role
from steplog.server.principals import Principal, Role

LATER = datetime(2030, 1, 1, tzinfo=UTC)


def ring_with(*records: KeyRecord) -> KeyRing:
    ring = KeyRing()
    for record in records:
        ring.apply(record)
    return ring


def test_the_wire_roles_are_the_principals_roles() -> None:
    assert set(get_args(KeyRole)) == {role.value for role in Role}


def test_a_minted_key_verifies_as_its_principal() -> None:
    secret, record = mint_key(Role.READ, ["shop", "billing", "shop"], "grafana")
    assert key_id_of_secret(secret) == record.key_id
    assert record.secret_sha256 == secret_digest(secret) and secret not in record.model_dump_json()
    assert record.projects == ["billing", "shop"] and record.revoked_at is None
    assert ring_with(record).verify(secret) == Principal(
        record.key_id, Role.READ, frozenset({"billing", "shop"})
    )


def test_a_key_for_every_project_covers_any_project() -> None:
    secret, record = mint_key("admin", None)
    principal = ring_with(record).verify(secret)
    assert principal is not None and principal.projects is None
    assert principal.covers("anything") and principal.may(Role.OPERATE)


def test_two_minted_keys_differ() -> None:
    (first, a), (second, b) = mint_key(Role.INGEST, ["p"]), mint_key(Role.INGEST, ["p"])
    assert first != second and a.key_id != b.key_id


@pytest.mark.parametrize("role, grants, denies", [
    (Role.INGEST, {Role.INGEST}, {Role.READ, Role.OPERATE, Role.ADMIN}),
    (Role.READ, {Role.READ}, {Role.INGEST, Role.OPERATE, Role.ADMIN}),
    (Role.OPERATE, {Role.READ, Role.OPERATE}, {Role.INGEST, Role.ADMIN}),
])
def test_a_verified_key_grants_its_role_for_its_projects_only(
    role: Role, grants: set[Role], denies: set[Role]
) -> None:
    secret, record = mint_key(role, ["a"])
    principal = ring_with(record).verify(secret)
    assert principal is not None
    assert all(principal.may(r) for r in grants) and not any(principal.may(r) for r in denies)
    assert principal.covers("a") and not principal.covers("b")


def test_a_revoked_key_is_refused_and_stays_revoked() -> None:
    secret, record = mint_key(Role.READ, ["a"])
    ring = ring_with(record, record.revoked(LATER))
    assert ring.verify(secret) is None
    ring.apply(record)  # an older record read again (a re-read from the beginning)
    assert ring.verify(secret) is None
    assert ring.list() == [record.revoked(LATER)]


def test_a_wrong_secret_of_a_known_key_is_refused() -> None:
    secret, record = mint_key(Role.READ, ["a"])
    tampered = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert ring_with(record).verify(tampered) is None


@pytest.mark.parametrize("secret", [
    "", "slk_", "Bearer x", "slk_sk_0123456789ab_short", "sk_0123456789ab",
    "slk_sk_0123456789ab_" + "A" * 44, "slk_SK_0123456789AB_" + "A" * 43, "\x00" * 100,
])
def test_malformed_secrets_are_refused(secret: str) -> None:
    _, record = mint_key(Role.ADMIN, None)
    assert ring_with(record).verify(secret) is None


def test_a_secret_of_an_unknown_key_is_refused() -> None:
    secret, _ = mint_key(Role.ADMIN, None)
    assert KeyRing().verify(secret) is None


def test_every_secret_costs_one_hash_and_one_constant_time_comparison(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unknown, malformed, wrong and right secrets all take the same path, so the time taken
    does not tell an existing key from a missing one."""
    comparisons: list[tuple[str, str]] = []
    compare = hmac.compare_digest

    def counting(a: str, b: str) -> bool:
        comparisons.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    secret, record = mint_key(Role.READ, ["a"])
    other, _ = mint_key(Role.READ, ["a"])
    ring = ring_with(record)
    for candidate in (secret, other, "malformed", secret[:-1] + "x"):
        comparisons.clear()
        ring.verify(candidate)
        assert len(comparisons) == 1 and all(len(side) == 64 for side in comparisons[0])


def test_unknown_roles_are_named_with_the_roles_there_are() -> None:
    with pytest.raises(KeysError, match="unknown role 'writer': expected one of "
                       "ingest, read, operate, admin"):
        parse_role("writer")
    with pytest.raises(KeysError, match="unknown role"):
        mint_key("root", None)


def test_keys_that_cannot_be_made_are_refused_with_the_reason() -> None:
    with pytest.raises(KeysError, match="an admin key covers every project"):
        mint_key(Role.ADMIN, ["a"])
    with pytest.raises(KeysError, match="at least one project"):
        mint_key(Role.READ, [])
    with pytest.raises(KeysError, match="projects.0 'bad\\\\x00name'"):
        mint_key(Role.READ, ["bad\x00name"])


def test_a_record_reads_back_from_its_bytes() -> None:
    _, record = mint_key(Role.OPERATE, ["a"], "on-call")
    revoked = record.revoked(LATER)
    assert KeyRecord.model_validate_json(revoked.model_dump_json()) == revoked
    assert revoked.revoked(datetime(2031, 1, 1, tzinfo=UTC)) == revoked
