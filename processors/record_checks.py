"""The checks of signed records (schemas/record_signing.py) before anything folds them: a record
of the events, signals or flows topic lands as its project's only when a key that may write
that project signed it. What fails is dead-lettered with the reason, never folded.

The rules, in order (the first that fails is the reason):

1. the record is signed (both headers);
2. its key id is a key of the keys topic;
3. that key has a signing key (keys made before signing have none: make a new key);
4. the MAC matches;
5. the key's role may write (ingest, operate, admin; not read);
6. the key covers the record's project;
7. the key was not revoked at or before the record's log time.

The log time is the record's broker timestamp: the events, signals and flows topics are
`LogAppendTime` (steplog/topics.py), so a producer cannot backdate a record past a revoke, and
replay, reading the same timestamps with the same keys, judges each record as live did.

The key lookup (`KeyLookup`) is injected: steplog/server/key_ring.py follows the keys topic
(this layer does not import the server). Before a batch is judged, the lookup holds every key
record logged up to the batch's newest log time (`catch_up`): a key made a moment before
(a key is published, acks=all, before its secret is shown) is known, not refused on a race,
and a revoke logged before a record is applied to it, in the processors as in replay, whose
snapshot of the keys topic is taken after the whole log it reads. When the lookup had read the
keys topic's end after that time already, this costs nothing; else one request for the keys
topic's end offsets (about a millisecond) per batch. A keys topic that cannot be read fails the
batch (a transient failure, as the hosts treat any other), never a record.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Final, Protocol

from steplog.errors import InvalidEventError
from steplog.schemas.keys import KeyRecord
from steplog.schemas.record_signing import RecordSigner, read_signature

from .stateful_consumer import Record

__all__ = [
    "WRITER_ROLES",
    "KeyLookup",
    "KnownKeys",
    "RecordChecks",
    "SignedRecord",
    "check_signed_record",
]

WRITER_ROLES: Final = frozenset({"ingest", "operate", "admin"})
"""The roles whose keys may write project data (a `read` key may not)."""


class KeyLookup(Protocol):
    """The keys of the keys topic, as far as read (steplog/server/key_ring.py)."""

    def get(self, key_id: str) -> KeyRecord | None:
        """The newest record of `key_id` read so far; None when none was."""
        ...

    async def catch_up(self, logged_ms: int) -> None:
        """Return once every key record logged up to `logged_ms` (ms since the epoch, the
        brokers' time) is read; raise when the topic cannot be read (a transient failure)."""
        ...


class SignedRecord(Record, Protocol):
    """A consumed record as the checks read it (aiokafka's ConsumerRecord)."""

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...
    @property
    def timestamp(self) -> int:
        """The broker's log time, in ms since the epoch."""
        ...


def check_signed_record(
    topic: str,
    value: bytes,
    headers: Iterable[tuple[str, bytes]] | None,
    log_time_ms: int,
    project: str,
    key_of: KeyLookup,
) -> None:
    """InvalidEventError naming the first rule of the module docstring the record fails."""
    signature = read_signature(headers)
    if signature is None:
        raise InvalidEventError(
            "headers", f"unsigned record for project {project!r}: records of {topic!r} must "
            "carry the steplog-key and steplog-mac headers of a key that may write the project"
        )
    key_id, mac = signature
    key = key_of.get(key_id)
    where = f"key {key_id!r}, project {project!r}"
    if key is None:
        raise InvalidEventError("headers.steplog-key", f"unknown key ({where})")
    if key.signing_key is None:
        raise InvalidEventError(
            "headers.steplog-key", f"key has no signing key ({where}): it was made before "
            "records were signed; make a new key (`steplog keys create`)"
        )
    if not _verifier(key.key_id, key.signing_key).matches(topic, value, mac):
        raise InvalidEventError(
            "headers.steplog-mac", f"signature does not match the record ({where})"
        )
    if key.role not in WRITER_ROLES:
        raise InvalidEventError("headers.steplog-key", f"a {key.role} key cannot write ({where})")
    if key.projects is not None and project not in key.projects:
        raise InvalidEventError(
            "project", f"key does not cover the record's project ({where}; it covers "
            f"{', '.join(key.projects)})"
        )
    if key.revoked_at is not None:
        logged = datetime.fromtimestamp(log_time_ms / 1000, UTC)
        if key.revoked_at <= logged:
            raise InvalidEventError(
                "headers.steplog-key", f"key revoked at {key.revoked_at.isoformat()}, at or "
                f"before the record's log time {logged.isoformat()} ({where})"
            )


@functools.lru_cache(maxsize=4096)
def _verifier(key_id: str, signing_key: str) -> RecordSigner:
    """A key's MAC maker, kept: it keeps the HMAC state keyed per topic (a third of a MAC's
    cost) and the key's bytes."""
    return RecordSigner(key_id, bytes.fromhex(signing_key))


class KnownKeys:
    """A `KeyLookup` over a fixed set of keys: replay's snapshot of the whole keys topic, taken
    before it reads the log, so that every key a record of the log can name is in it."""

    def __init__(self, records: Iterable[KeyRecord]) -> None:
        self._records = {record.key_id: record for record in records}

    def get(self, key_id: str) -> KeyRecord | None:
        return self._records.get(key_id)

    async def catch_up(self, logged_ms: int) -> None:
        """Nothing to catch up with: the snapshot is all there is."""


class RecordChecks:
    """The checks as a host applies them to a batch: `prepare` it (catching the key lookup up
    with the batch's log times), then `check` each decoded record."""

    def __init__(self, keys: KeyLookup) -> None:
        self.keys = keys

    async def prepare(self, batch: Iterable[SignedRecord]) -> None:
        """Catch the lookup up with the newest log time of the batch's signed records (the
        unsigned ones are refused whatever the keys)."""
        newest = max(
            (r.timestamp for r in batch if read_signature(r.headers) is not None), default=None
        )
        if newest is not None:
            await self.keys.catch_up(newest)

    def check(self, record: SignedRecord, project: str) -> None:
        """`check_signed_record` of a consumed record whose value decoded to `project`'s."""
        check_signed_record(
            record.topic, record.value or b"", record.headers, record.timestamp, project,
            self.keys,
        )
