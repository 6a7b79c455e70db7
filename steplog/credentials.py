"""The key Steplog's own clients send to its HTTP surfaces (the SQL endpoint, the web service).

STEPLOG_API_KEY when set (a deployment whose data dir is not at hand, or a key of another
role); else the local admin key that `steplog dev` keeps in `<data dir>/admin.key`
(steplog/server/admin_key.py makes it). Here in the kernel because the SDK's run-result lookup
needs the same answer as the CLI, and the SDK may not import the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from steplog.settings import Settings

__all__ = ["ADMIN_KEY_FILE", "admin_key_path", "client_key", "local_admin_key"]

ADMIN_KEY_FILE: Final = "admin.key"


def admin_key_path(settings: Settings) -> Path:
    return settings.data_dir / ADMIN_KEY_FILE


def local_admin_key(settings: Settings) -> str | None:
    """The secret in `<data dir>/admin.key`, or None when there is no such file."""
    try:
        secret = admin_key_path(settings).read_text().strip()
    except FileNotFoundError:
        return None
    return secret or None


def client_key(settings: Settings) -> str | None:
    """The key a command of ours sends: STEPLOG_API_KEY, else the local admin key."""
    if settings.api_key is not None:
        return settings.api_key.get_secret_value()
    return local_admin_key(settings)
