"""Who sends a SQL request (read as ClickHouse's HTTP interface reads it), and what they may do.

The password is a Steplog key (`steplog keys create`), sent as a ClickHouse client sends a
password: HTTP basic auth (`curl -u user:KEY`, clickhouse-connect, JDBC), the `user`/`password`
URL parameters, or the `X-ClickHouse-User`/`X-ClickHouse-Key` headers (Grafana, clickhouse-go);
`Authorization: Bearer KEY` is taken too, as on Steplog's other surfaces. The user name is
ignored: the key alone says who is asking (a user name is what clients send by default, often
`default`, and is no secret), and it is never echoed, in case someone typed the key there.
Like ClickHouse, a request that mixes two of these ways is refused rather than guessed at.

What a key may do here:
- `read`, `operate`: read queries (the guard's read policy, the engine in readonly=1);
- `admin`: also write (DDL, INSERT): the only writer. The processors write in the store
  process itself; the writers here are the web service's alert evaluator (its alerts' rows),
  an operator or a test holding the admin key; analysts' keys never write;
- `ingest`: nothing (403);
- a key scoped to some projects: nothing (403). Row isolation per project cannot be made sound
  on the embedded engine (no row policies without access management; a view per project is
  bypassed by `system.*`, table functions over tables and the plain tables): docs/sql-endpoint.md.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from enum import StrEnum

from steplog.server.principals import KeyVerifier, Principal, Role
from steplog.server.sql_errors import SqlError

__all__ = ["Access", "authorize"]

_HOW_TO = (
    "send a Steplog key as the password: HTTP basic auth (user name of your choice), the "
    "`password` URL parameter or the X-ClickHouse-Key header"
)


class Access(StrEnum):
    READ = "read"
    WRITE = "write"


def authorize(
    verifier: KeyVerifier, headers: Mapping[str, str], params: Mapping[str, str]
) -> tuple[Principal, Access]:
    """The key's principal and what it may do here; SqlError (401 or 403) otherwise."""
    key = _key_of(headers, params)
    if key is None:
        raise SqlError(194, "REQUIRED_PASSWORD", f"Steplog's SQL endpoint needs a key: {_HOW_TO}")
    principal = verifier.verify(key)
    if principal is None:
        raise SqlError(
            516, "AUTHENTICATION_FAILED",
            "Authentication failed: the key is unknown, revoked or malformed",
        )
    if principal.projects is not None:
        raise SqlError(
            497, "ACCESS_DENIED",
            f"key {principal.key_id} covers only some projects, and SQL is open to keys of "
            "every project only (per-project rows cannot be isolated on the embedded engine); "
            "read your runs through the JSON API, or ask an admin for an all-projects read key",
        )
    if principal.may(Role.ADMIN):
        return principal, Access.WRITE
    if principal.may(Role.READ):
        return principal, Access.READ
    raise SqlError(
        497, "ACCESS_DENIED",
        f"key {principal.key_id} has role {principal.role.value}; SQL needs role read, operate "
        "or admin",
    )


def _key_of(headers: Mapping[str, str], params: Mapping[str, str]) -> str | None:
    """The key a request carries, or None; SqlError when it mixes ways or is malformed."""
    found: dict[str, str] = {}
    authorization = headers.get("Authorization", "").strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "basic":
            found["the Authorization header"] = _basic_password(value.strip())
        elif scheme.lower() == "bearer":
            found["the Authorization header"] = value.strip()
        else:
            raise SqlError(
                516, "AUTHENTICATION_FAILED",
                f"unsupported Authorization scheme {scheme[:20]!r}: use Basic or Bearer",
            )
    if "X-ClickHouse-Key" in headers or "X-ClickHouse-User" in headers:
        found["the X-ClickHouse-User/Key headers"] = headers.get("X-ClickHouse-Key", "")
    if "password" in params or "user" in params:
        found["the user/password parameters"] = params.get("password", "")
    if len(found) > 1:
        raise SqlError(
            516, "AUTHENTICATION_FAILED",
            "Invalid authentication: it is not allowed to use "
            f"{' and '.join(sorted(found))} simultaneously",
        )
    key = next(iter(found.values()), "")
    return key or None


def _basic_password(value: str) -> str:
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise SqlError(
            516, "AUTHENTICATION_FAILED", "the Basic Authorization header is not base64 of user:key"
        ) from None
    _, colon, password = decoded.partition(":")
    if not colon:
        raise SqlError(
            516, "AUTHENTICATION_FAILED", "the Basic Authorization header has no ':' before the key"
        )
    return password
