"""The local admin key of `steplog dev`, and the key a command of ours sends.

`steplog dev` keeps its one-command start with nothing open: on start it makes sure that
`<data dir>/admin.key` (mode 0600) holds a valid admin key, minting and publishing one when the
file is missing or its key is unknown or revoked, and prints the secret that one time. The CLI,
the demo and the tests then find it there; STEPLOG_API_KEY, when set, comes first (a deployment
whose data dir is not at hand, or a key of another role).
"""

from __future__ import annotations

from steplog.credentials import admin_key_path, local_admin_key
from steplog.server.key_ring import load_key_ring, mint_key, publish_key
from steplog.server.principals import Role
from steplog.server.private_files import write_private
from steplog.settings import Settings

__all__ = ["ensure_admin_key"]


def ensure_admin_key(
    settings: Settings, *, timeout: float = 30.0, description: str = "steplog dev's local admin key"
) -> str | None:
    """Make sure `<data dir>/admin.key` holds a valid admin key; the new secret when one was
    minted (for the caller to show once), None when the file's key was valid already.

    Failure protocol: the key is published before the file is written. Dying in between
    leaves a valid key nobody has (revocable with `steplog keys revoke`), and the next start
    mints another; the other order could leave a file whose key no process accepts."""
    existing = local_admin_key(settings)
    if existing is not None:
        principal = load_key_ring(settings, timeout=timeout).verify(existing)
        if principal is not None and principal.may(Role.ADMIN):
            return None
    secret, record = mint_key(Role.ADMIN, None, description)
    publish_key(settings, record)
    write_private(admin_key_path(settings), secret + "\n")
    return secret
