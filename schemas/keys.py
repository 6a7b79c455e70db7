"""The keys topic (compacted): one record per API key, the newest per key id.

A key is a random secret shown once, when it is made (`steplog keys create`); what travels on
the topic, and what every Steplog process of a deployment reads back, is only its hash, its
role and the projects it covers. Revoking a key writes its record again with `revoked_at`:
compaction keeps that newest record, so a revoked key stays listed (and refused) for good.

The secret carries its own id, `slk_<key_id>_<secret>`: a verifier finds the record by id and
compares one hash, instead of hashing against every key it knows.

Hashing: SHA-256, not a slow password KDF (bcrypt, scrypt, argon2). A slow KDF protects
low-entropy secrets that people choose, where a stolen hash can be brute-forced word by word;
these secrets are 32 bytes from the OS's CSPRNG (256 bits), which no amount of hashing speed
makes guessable, and a fast hash keeps verifying every request cheap.

Signing: a record also carries the key's *signing key* (schemas/record_signing.py: derived from
the secret, what Kafka records are signed with), because the processors that check signed
records never see secrets. So whoever reads the keys topic can sign records as any key: only
service principals (the processors, the web service, the admin's CLI) may read it; grant no
application principal a read ACL on it (README, "Security").
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Annotated, Final, Literal, get_args

from pydantic import Field

from .base import SCHEMA_VERSION, SchemaVersion, WireModel
from .limits import Label, Name, Timestamp

__all__ = [
    "KEY_ID_PATTERN",
    "KEY_ROLES",
    "KeyId",
    "KeyRecord",
    "KeyRole",
    "SECRET_PREFIX",
    "format_secret",
    "key_id_of_secret",
    "secret_digest",
]

KEY_ID_PATTERN: Final = r"^sk_[0-9a-f]{12}$"
"""A key's public id: `sk_` and 12 hex digits (48 random bits: unique among a deployment's
keys, short enough to type into `steplog keys revoke`)."""

SECRET_PREFIX: Final = "slk_"
"""What every secret starts with, so that a key pasted into a log or a repository is easy to
spot (and to grep for)."""

_SECRET = re.compile(r"^slk_(sk_[0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
"""`slk_<key id>_<32 bytes in unpadded base64url: 43 characters>`."""

KeyId = Annotated[str, Field(pattern=KEY_ID_PATTERN)]

KeyRole = Literal["ingest", "read", "operate", "admin"]
"""The roles a key can have; what each grants is steplog/server/principals.py's `Role`, whose
values these are (this layer imports nothing above it, and a test checks the two agree)."""

KEY_ROLES: Final[tuple[str, ...]] = get_args(KeyRole)

SecretDigest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
SigningKey = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class KeyRecord(WireModel):
    """One API key as every process sees it; the Kafka key of its record is `key_id`."""

    type: Literal["key.defined"] = "key.defined"
    schema_version: SchemaVersion = SCHEMA_VERSION
    key_id: KeyId
    secret_sha256: SecretDigest = Field(
        description="Hex SHA-256 of the whole secret (`slk_...`), as `secret_digest` makes it."
    )
    role: KeyRole
    projects: list[Name] | None = Field(
        min_length=1, description="The projects the key covers; null: every project."
    )
    created_at: Timestamp
    revoked_at: Timestamp | None = Field(None, description="Null while the key is valid.")
    description: Label | None = None
    signing_key: SigningKey | None = Field(
        None,
        description="Hex of the key's record signing key (schemas/record_signing.py); null for "
        "keys made before records were signed: their records are refused (make a new key).",
    )

    def revoked(self, at: datetime) -> KeyRecord:
        """This record as revoked at `at` (a revoked key stays revoked at its first time)."""
        if self.revoked_at is not None:
            return self
        return self.model_copy(update={"revoked_at": at})


def format_secret(key_id: str, secret: str) -> str:
    """The secret as shown to the person who made the key: `slk_<key id>_<secret>`, where
    `secret` is 32 random bytes in unpadded base64url."""
    return f"{SECRET_PREFIX}{key_id}_{secret}"


def key_id_of_secret(secret: str) -> str | None:
    """The key id a secret carries, or None when it is not shaped like one of our secrets."""
    found = _SECRET.match(secret)
    return found.group(1) if found else None


def secret_digest(secret: str) -> str:
    """What is stored of a secret: the hex SHA-256 of its UTF-8 (see the module's docstring
    for why a fast hash is sound here)."""
    return hashlib.sha256(secret.encode()).hexdigest()
