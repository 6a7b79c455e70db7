"""API keys on the real broker: `steplog keys create/list/revoke`, a key ring following the keys
topic (a revoke takes effect within seconds, without a restart), and `steplog dev`'s local
admin key."""

from __future__ import annotations

import re
import stat
import time
from datetime import UTC, datetime

from pydantic import SecretStr

from steplog.credentials import admin_key_path, client_key, local_admin_key
from steplog.server.admin_key import ensure_admin_key
from steplog.server.key_ring import KeyRingFollower, load_key_ring, mint_key, publish_key
from steplog.server.principals import Principal, Role
from steplog.settings import Settings
from tests.conftest import run_cli, wait_for

REVOKE_DEADLINE_S = 5.0


def created_key(settings: Settings, *args: str) -> tuple[str, str]:
    """`steplog keys create ARGS`: the key id and the secret it printed."""
    created = run_cli(settings, "keys", "create", *args)
    assert created.returncode == 0, created.stdout + created.stderr
    key_id = re.search(r"^key id: (sk_[0-9a-f]{12})$", created.stdout, re.M)
    secret = re.search(r"^secret \(shown once, keep it safe\): (slk_\S+)$", created.stdout, re.M)
    assert key_id and secret, created.stdout
    return key_id.group(1), secret.group(1)


def test_a_key_made_with_the_cli_is_seen_by_a_follower_and_revoked_within_seconds(
    topics: Settings,
) -> None:
    with KeyRingFollower(topics) as follower:
        follower.wait_caught_up(30)
        key_id, secret = created_key(topics, "--project", "shop", "--project", "billing",
                                     "--role", "read", "--description", "grafana")
        wait_for(lambda: follower.ring.verify(secret) is not None, timeout=REVOKE_DEADLINE_S,
                 what="the follower to see the new key")
        assert follower.ring.verify(secret) == Principal(
            key_id, Role.READ, frozenset({"shop", "billing"})
        )

        listed = run_cli(topics, "keys", "list")
        assert listed.returncode == 0, listed.stderr
        [row] = [line for line in listed.stdout.splitlines() if line.startswith(key_id)]
        assert row.split()[1:2] == ["read"] and "billing,shop  grafana" in row and " - " in row
        record = follower.ring.get(key_id)
        assert record is not None
        assert secret not in listed.stdout and record.secret_sha256 not in listed.stdout

        revoked = run_cli(topics, "keys", "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        assert f"revoked key {key_id} (read, billing,shop)" in revoked.stdout
        began = time.monotonic()
        wait_for(lambda: follower.ring.verify(secret) is None, timeout=REVOKE_DEADLINE_S,
                 what="the follower to refuse the revoked key")
        print(f"revoke seen by the follower {time.monotonic() - began:.2f}s after the CLI ended")

    listed = run_cli(topics, "keys", "list")
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(key_id)]
    assert " - " not in row and str(datetime.now(UTC).year) in row.split()[4]
    again = run_cli(topics, "keys", "revoke", key_id)
    assert again.returncode == 0 and "was revoked already" in again.stdout


def test_a_follower_started_later_has_every_existing_key_once_caught_up(topics: Settings) -> None:
    secrets = []
    for role in (Role.INGEST, Role.OPERATE):
        secret, record = mint_key(role, ["shop"])
        publish_key(topics, record)
        secrets.append(secret)
    with KeyRingFollower(topics) as follower:
        follower.wait_caught_up(30)
        assert [p and p.role for p in map(follower.ring.verify, secrets)] == [
            Role.INGEST, Role.OPERATE
        ]


def test_keys_commands_name_what_was_wrong(topics: Settings) -> None:
    role = run_cli(topics, "keys", "create", "--role", "root", "--all-projects")
    assert role.returncode == 2
    assert "unknown role 'root': expected one of ingest, read, operate, admin" in role.stderr
    scope = run_cli(topics, "keys", "create", "--role", "ingest")
    assert scope.returncode == 2 and "needs --project P (repeatable) or --all-projects" in (
        scope.stderr
    )
    unknown = run_cli(topics, "keys", "revoke", "sk_000000000000")
    assert unknown.returncode == 2 and "no key with id 'sk_000000000000'" in unknown.stderr


def test_keys_commands_without_the_keys_topic_say_how_to_make_it(settings: Settings) -> None:
    listed = run_cli(settings, "keys", "list")
    assert listed.returncode == 2
    assert f"the keys topic '{settings.topics.keys}' does not exist" in listed.stderr
    assert "steplog topics ensure" in listed.stderr


def test_the_local_admin_key_is_made_once_kept_private_and_replaced_when_revoked(
    topics: Settings,
) -> None:
    assert local_admin_key(topics) is None
    secret = ensure_admin_key(topics)
    assert secret is not None and local_admin_key(topics) == secret == client_key(topics)
    assert stat.S_IMODE(admin_key_path(topics).stat().st_mode) == 0o600
    principal = load_key_ring(topics).verify(secret)
    assert principal is not None and principal.role is Role.ADMIN and principal.projects is None

    assert ensure_admin_key(topics) is None  # valid: kept
    record = load_key_ring(topics).get(principal.key_id)
    assert record is not None
    publish_key(topics, record.revoked(datetime.now(UTC)))
    replacement = ensure_admin_key(topics)
    assert replacement not in (None, secret) and local_admin_key(topics) == replacement

    explicit = topics.model_copy(update={"api_key": SecretStr("slk_from_the_environment")})
    assert client_key(explicit) == "slk_from_the_environment"
