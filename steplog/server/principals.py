"""Who is asking: the key a request carried, as the role and projects it grants.

A key is a random secret shown once (`steplog keys create`); Steplog keeps only its hash.
Roles are ordered by what they add, each including the ones before it but `ingest`, which is
its own: `read` (query runs of its projects), `operate` (read, plus cancel and retrigger),
`admin` (keys, every project, everything); `ingest` sends events and signals for its projects.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

__all__ = ["KeyVerifier", "Principal", "Role"]


class Role(StrEnum):
    INGEST = "ingest"
    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"


_GRANTS: dict[Role, frozenset[Role]] = {
    Role.INGEST: frozenset({Role.INGEST}),
    Role.READ: frozenset({Role.READ}),
    Role.OPERATE: frozenset({Role.READ, Role.OPERATE}),
    Role.ADMIN: frozenset(Role),
}


@dataclass(frozen=True)
class Principal:
    key_id: str
    role: Role
    projects: frozenset[str] | None
    """The projects the key covers; None: every project."""

    def may(self, role: Role) -> bool:
        return role in _GRANTS[self.role]

    def covers(self, project: str) -> bool:
        return self.projects is None or project in self.projects


class KeyVerifier(Protocol):
    def verify(self, secret: str) -> Principal | None:
        """The key's principal, or None for an unknown or revoked key."""
        ...
