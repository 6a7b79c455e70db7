"""Keys for tests of the web service whose subject is not the keys themselves (ingestion, the
read API, the poison corpus): a real `KeyRing` holding freshly minted keys, applied directly
rather than read from the keys topic, and the header that presents one. The keys topic path
(a follower, revokes reaching a running service) is tested in test_web_auth.py.
"""

from __future__ import annotations

from steplog.server.key_ring import KeyRing, mint_key
from steplog.server.principals import Role

__all__ = ["admin_ring", "bearer"]


def admin_ring() -> tuple[KeyRing, str]:
    """A ring holding one admin key (every project, every role), and its secret."""
    ring = KeyRing()
    secret, record = mint_key(Role.ADMIN, None, "a test's admin key")
    ring.apply(record)
    return ring, secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}
