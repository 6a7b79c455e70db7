"""`steplog keys ...`: make, list and revoke API keys (steplog/server/key_ring.py).

These commands write to and read the keys topic directly: whoever may run them holds the
deployment's Kafka credentials, which is more than any key grants.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from steplog.credentials import admin_key_path
from steplog.schemas.keys import KEY_ROLES, KeyRecord
from steplog.server.admin_key import ensure_admin_key
from steplog.server.cli_errors import reports_errors
from steplog.server.key_ring import KeysError, load_key_ring, mint_key, parse_role, publish_key
from steplog.server.principals import Role
from steplog.settings import load_settings

keys_app = typer.Typer(help="API keys: make one (shown once), list them, revoke one.")


@keys_app.command("create")
@reports_errors
def keys_create(
    role: Annotated[
        str, typer.Option("--role", help=f"What the key may do: {', '.join(KEY_ROLES)}.")
    ],
    project: Annotated[
        list[str] | None,
        typer.Option("--project", help="A project the key covers (repeat for several)."),
    ] = None,
    all_projects: Annotated[
        bool, typer.Option("--all-projects", help="The key covers every project.")
    ] = False,
    description: Annotated[
        str | None, typer.Option("--description", help="Who or what the key is for.")
    ] = None,
) -> None:
    """Make a key and print its secret, once: Steplog keeps only its hash."""
    chosen = parse_role(role)
    if project and all_projects:
        raise KeysError("give --project or --all-projects, not both")
    if not project and not all_projects and chosen is not Role.ADMIN:
        raise KeysError(f"a {chosen.value} key needs --project P (repeatable) or --all-projects")
    settings = load_settings()
    secret, record = mint_key(chosen, project or None, description)
    publish_key(settings, record)
    typer.echo(f"key id: {record.key_id}")
    typer.echo(f"secret (shown once, keep it safe): {secret}")


@keys_app.command("ensure-admin")
@reports_errors
def keys_ensure_admin() -> None:
    """Make sure `<data dir>/admin.key` (0600) holds a valid admin key, the one Steplog's own
    processes send: minted and printed once when missing, unknown or revoked (the one-shot
    setup of a deployment runs it; `steplog dev` does the same on start)."""
    settings = load_settings()
    secret = ensure_admin_key(settings, description="services' admin key (keys ensure-admin)")
    path = admin_key_path(settings)
    if secret is None:
        typer.echo(f"{path} holds a valid admin key")
    else:
        typer.echo(f"new admin key in {path}; secret (shown once, keep it safe): {secret}")


@keys_app.command("list")
@reports_errors
def keys_list() -> None:
    """Every key: id, role, projects, when made, when revoked (never secrets nor hashes)."""
    records = load_key_ring(load_settings()).list()
    typer.echo(f"{'KEY ID':<16} {'ROLE':<8} {'CREATED':<20} {'REVOKED':<20} PROJECTS  DESCRIPTION")
    for record in records:
        typer.echo(_row(record))
    if not records:
        typer.echo("(no keys)")


@keys_app.command("revoke")
@reports_errors
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (sk_...).")]) -> None:
    """Revoke a key: every Steplog process refuses it within seconds."""
    settings = load_settings()
    ring = load_key_ring(settings)
    record = ring.get(key_id)
    if record is None:
        raise KeysError(f"no key with id {key_id!r} on topic {settings.topics.keys!r} "
                        "(`steplog keys list` shows the keys)")
    if record.revoked_at is not None:
        typer.echo(f"key {key_id} was revoked already, at {_when(record.revoked_at)}")
        return
    publish_key(settings, record.revoked(datetime.now(UTC)))
    typer.echo(f"revoked key {key_id} ({record.role}, {_projects(record)})")


def _row(record: KeyRecord) -> str:
    revoked = _when(record.revoked_at) if record.revoked_at is not None else "-"
    return (f"{record.key_id:<16} {record.role:<8} {_when(record.created_at):<20} "
            f"{revoked:<20} {_projects(record)}  {record.description or ''}").rstrip()


def _projects(record: KeyRecord) -> str:
    return ",".join(record.projects) if record.projects is not None else "(all projects)"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
