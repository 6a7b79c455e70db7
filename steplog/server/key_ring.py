"""The API keys every process of a deployment knows, read from the keys topic and checked in
memory (schemas/keys.py: what a key record holds and why its hash is SHA-256).

- `KeyRing` is pure: `apply` a record, `verify` a secret (a `KeyVerifier` of
  steplog/server/principals.py), `list` the records.
- `KeyRingFollower` fills a ring from the keys topic, from its beginning, and keeps following
  it on a thread of its own, so that a web service (aiohttp) and a synchronous process alike
  see a new or revoked key within about a second (the fetch wait), without a restart. A server
  calls `wait_caught_up` before it answers: until then its ring may lack keys that exist.
  It is also the processors' `KeyLookup` (processors/record_checks.py): `catch_up(t)` returns
  once the ring holds every key record logged up to time t (reading the topic's end offsets
  after t, then waiting until the follower has applied up to them), so that a key made or
  revoked a moment before a record is known when the record is judged.
- `mint_key` makes a key (pure); `publish_key` writes a record (acks=all, flushed), and a
  revoke is a record written again with `revoked_at`.

Failure protocol: the keys topic is the only truth; a ring is a cache of it. A follower that
loses the broker keeps its ring as it was (a key revoked meanwhile stays usable until the broker
answers again) and reconnects; a record it cannot read is logged and skipped (it grants
nothing). A revoke is final: a ring never takes a key back from revoked, whatever arrives later.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from steplog import kafka
from steplog.errors import SteplogError
from steplog.schemas.codec import encode
from steplog.schemas.record_signing import derive_signing_key
from steplog.schemas.keys import KEY_ROLES, KeyRecord, format_secret, key_id_of_secret, secret_digest
from steplog.server.principals import Principal, Role
from steplog.settings import Settings

__all__ = [
    "KeyRing",
    "KeyRingFollower",
    "KeysError",
    "load_key_ring",
    "mint_key",
    "parse_role",
    "publish_key",
    "publish_key_async",
    "read_key_ring",
]

log = logging.getLogger("steplog.server.key_ring")

_SECRET_BYTES = 32
# Compared against when a secret names no known key, so that an unknown key and a wrong secret
# of a known one cost the same (no SHA-256 is all zeros in practice).
_NO_KEY_DIGEST = "0" * 64
_FETCH_WAIT_MS = 500
"""How long a fetch waits for new records: the most a new revoke waits to be seen."""
_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 5.0)


class KeysError(SteplogError):
    """A key that cannot be made, found or read: an unknown role or key id, projects that
    cannot be keyed, a keys topic that is missing or could not be read in time."""


def parse_role(role: str) -> Role:
    """The role named `role`; KeysError listing the roles otherwise."""
    try:
        return Role(role)
    except ValueError:
        raise KeysError(
            f"unknown role {role!r}: expected one of {', '.join(KEY_ROLES)}"
        ) from None


def mint_key(
    role: Role | str,
    projects: Iterable[str] | None,
    description: str | None = None,
    *,
    now: datetime | None = None,
) -> tuple[str, KeyRecord]:
    """A new key: its secret (to show once, never to store) and its record (to publish).

    `projects` None: every project. An admin key always covers every project (it manages
    every project's keys), so it takes no projects."""
    chosen = parse_role(role) if isinstance(role, str) else role
    covered = None if projects is None else sorted(set(projects))
    if chosen is Role.ADMIN and covered is not None:
        raise KeysError("an admin key covers every project: give it no projects")
    if covered == []:
        raise KeysError("a key must cover at least one project (or every project)")
    key_id = "sk_" + secrets.token_hex(6)
    random_part = base64.urlsafe_b64encode(secrets.token_bytes(_SECRET_BYTES)).rstrip(b"=")
    secret = format_secret(key_id, random_part.decode())
    try:
        record = KeyRecord(
            key_id=key_id,
            secret_sha256=secret_digest(secret),
            role=chosen.value,
            projects=covered,
            created_at=now or datetime.now(UTC),
            description=description,
            signing_key=derive_signing_key(secret).hex(),
        )
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        raise KeysError(f"{where} {error.get('input')!r}: {error['msg']}") from None
    return secret, record


class KeyRing:
    """The key records of a deployment, by key id; safe to use from several threads (a
    follower applies on its thread while requests verify on theirs)."""

    def __init__(self) -> None:
        self._records: dict[str, KeyRecord] = {}
        self._lock = threading.Lock()

    def apply(self, record: KeyRecord) -> None:
        """Take the newest record of a key; a revoked key stays revoked."""
        with self._lock:
            current = self._records.get(record.key_id)
            if current is not None and current.revoked_at is not None:
                return
            self._records[record.key_id] = record

    def verify(self, secret: str) -> Principal | None:
        """The principal of a valid key's secret; None for a secret that is malformed, names
        no known key, does not match its key's hash, or whose key is revoked.

        One SHA-256 and one constant-time comparison whatever the secret, so that the time
        taken does not tell a wrong secret of an existing key from a key that does not exist.
        """
        key_id = key_id_of_secret(secret)
        with self._lock:
            record = self._records.get(key_id) if key_id is not None else None
        expected = record.secret_sha256 if record is not None else _NO_KEY_DIGEST
        matches = hmac.compare_digest(secret_digest(secret), expected)
        if not matches or record is None or record.revoked_at is not None:
            return None
        projects = frozenset(record.projects) if record.projects is not None else None
        return Principal(record.key_id, Role(record.role), projects)

    def get(self, key_id: str) -> KeyRecord | None:
        with self._lock:
            return self._records.get(key_id)

    def list(self) -> builtins.list[KeyRecord]:
        """Every record, revoked ones too, oldest first."""
        with self._lock:
            records = builtins.list(self._records.values())
        return sorted(records, key=lambda r: (r.created_at, r.key_id))


# --- reading the keys topic -------------------------------------------------------------------


def _apply_message(ring: KeyRing, value: bytes | None, offset: int, logged_ms: int) -> None:
    try:
        if value is None:
            raise ValueError("a tombstone (null value) holds no key")
        record = KeyRecord.model_validate_json(value)
        if record.revoked_at is not None:
            # A revoke takes effect when the broker logged it (the keys topic is
            # LogAppendTime), or later if it says so: then every record logged at or after
            # that time was logged after the revoke was in the topic, so a checker that has
            # read the topic to its end since can refuse it (`KeyRingFollower.catch_up`), and
            # replay, reading the same times, refuses exactly the same records.
            logged = datetime.fromtimestamp(logged_ms / 1000, UTC)
            record = record.model_copy(update={"revoked_at": max(record.revoked_at, logged)})
        ring.apply(record)
    except (ValueError, ValidationError) as exc:
        # Nothing a bad record says can grant access: skip it, loudly.
        log.warning("skipped the keys-topic record at offset %d: %s", offset, exc)


async def _read_keys(
    settings: Settings,
    ring: KeyRing,
    *,
    follow: bool,
    caught_up: Callable[[], None],
    read_to: Callable[[dict[int, int]], None] | None = None,
) -> None:
    """Apply the keys topic from its beginning to `ring`; call `caught_up` once every record
    that was there when reading began is applied; then return (`follow` False) or go on
    applying new records until cancelled. KeysError when the topic does not exist and
    `follow` is False; a follower waits for it instead. `read_to` is told, after each fetch,
    each partition's offset up to which every record is applied."""
    consumer = kafka.consumer(
        kafka.access(settings),
        client_id="steplog-keys",
        group_id=None,  # every reader reads everything: no group, no committed offsets
        enable_auto_commit=False,
        fetch_max_wait_ms=_FETCH_WAIT_MS,
    )
    await consumer.start()
    try:
        partitions = await _partitions(settings, wait=follow)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        announced = False
        while True:
            positions = {p: await consumer.position(p) for p in partitions}
            if read_to is not None:
                read_to({p.partition: offset for p, offset in positions.items()})
            if not announced and all(positions[p] >= ends[p] for p in partitions):
                announced = True
                caught_up()
                if not follow:
                    return
            batches = await consumer.getmany(*partitions, timeout_ms=_FETCH_WAIT_MS)
            for messages in batches.values():
                for message in messages:
                    _apply_message(ring, message.value, message.offset, message.timestamp)
    finally:
        await consumer.stop()


async def _partitions(
    settings: Settings, *, wait: bool
) -> builtins.list[TopicPartition]:
    """The keys topic's partitions; KeysError when it does not exist, or (`wait`) wait for it."""
    topic = settings.topics.keys
    attempt = 0
    while True:
        numbers = await _topic_partitions(settings)
        if numbers:
            return [TopicPartition(topic, n) for n in numbers]
        if not wait:
            raise _no_keys_topic(settings)
        if attempt == 0:
            log.warning("waiting for the keys topic %r to be created", topic)
        await asyncio.sleep(_RETRY_DELAYS_S[min(attempt, len(_RETRY_DELAYS_S) - 1)])
        attempt += 1


async def _topic_partitions(settings: Settings) -> builtins.list[int]:
    """The keys topic's partition numbers; none when it does not exist."""
    admin = kafka.admin_client(kafka.access(settings), client_id="steplog-keys")
    await admin.start()
    try:
        # Every topic's name first, and the keys topic by name only if it is there: asking a
        # broker with auto-creation for a missing topic by name can create it, with the
        # broker's defaults (deleting records after a week: keys would vanish).
        if settings.topics.keys not in await admin.list_topics():
            return []
        (described,) = await admin.describe_topics([settings.topics.keys])
    finally:
        await admin.close()
    return sorted(p["partition"] for p in described["partitions"])


async def _end_offsets(settings: Settings) -> dict[int, int]:
    """The end offset of every partition of the keys topic (none when it does not exist)."""
    partitions = [TopicPartition(settings.topics.keys, n) for n in await _topic_partitions(settings)]
    consumer = kafka.consumer(kafka.access(settings), client_id="steplog-keys", group_id=None,
                              enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return {p.partition: end for p, end in ends.items()}


async def read_key_ring(settings: Settings, *, timeout: float = 30.0) -> KeyRing:
    """The keys as the topic has them now (read once; for commands, not servers)."""
    ring = KeyRing()
    try:
        await asyncio.wait_for(
            _read_keys(settings, ring, follow=False, caught_up=lambda: None), timeout
        )
    except TimeoutError:
        raise KeysError(
            f"could not read the keys topic {settings.topics.keys!r} at "
            f"{settings.kafka_bootstrap} within {timeout:g}s"
        ) from None
    return ring


def load_key_ring(settings: Settings, *, timeout: float = 30.0) -> KeyRing:
    """`read_key_ring` for synchronous callers."""
    return asyncio.run(read_key_ring(settings, timeout=timeout))


class KeyRingFollower:
    """Keeps `ring` up to date with the keys topic on a thread (and event loop) of its own.

        follower = KeyRingFollower(settings).start()
        follower.wait_caught_up(30)      # before answering any request
        principal = follower.ring.verify(secret)
        ...
        follower.stop()

    Also a context manager (start on enter, stop on exit).
    """

    def __init__(self, settings: Settings, ring: KeyRing | None = None) -> None:
        self.ring = ring if ring is not None else KeyRing()
        self._settings = settings
        self._caught_up = threading.Event()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_error: str | None = None
        self._read_to: dict[int, int] = {}
        """Per partition of the keys topic: every record before this offset is in the ring."""
        self._read_more = threading.Condition()
        self._read_as_of_ms = 0
        """The ring holds every key record logged before this time (ms since the epoch)."""
        self._thread = threading.Thread(target=self._run, name="steplog-keys", daemon=True)

    @property
    def caught_up(self) -> bool:
        """Whether every key that existed when following began is in the ring."""
        return self._caught_up.is_set()

    def start(self) -> KeyRingFollower:
        self._thread.start()
        return self

    def wait_caught_up(self, timeout: float) -> None:
        """Return once the ring has every key that existed when following began; KeysError
        after `timeout` seconds, saying what is in the way."""
        if not self._caught_up.wait(timeout):
            topic, bootstrap = self._settings.topics.keys, self._settings.kafka_bootstrap
            because = f" (last error: {self._last_error})" if self._last_error else ""
            raise KeysError(
                f"the keys topic {topic!r} at {bootstrap} was not read within {timeout:g}s"
                f"{because}: does it exist (`steplog topics ensure`) and is the broker up?"
            )

    def get(self, key_id: str) -> KeyRecord | None:
        """The ring's record of `key_id` (`KeyLookup.get`)."""
        return self.ring.get(key_id)

    async def catch_up(self, logged_ms: int, timeout: float = 30.0) -> None:
        """Return once the ring holds every record the keys topic logged up to `logged_ms`
        (`KeyLookup.catch_up`): at once when it was read to the topic's end at a later time
        already, else after reading the end offsets now and waiting for the follower to apply
        up to them. KeysError when the end cannot be read or reached within `timeout` seconds
        (a transient failure: the caller retries or stops).

        The times compared are this machine's clock and the brokers' log times: they must
        agree (NTP), as Kafka's time-based retention already assumes."""
        if logged_ms < self._read_as_of_ms:
            return
        asked_ms = int(time.time() * 1000)
        try:
            ends = await asyncio.wait_for(_end_offsets(self._settings), timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise KeysError(
                f"could not read the end of the keys topic {self._settings.topics.keys!r} at "
                f"{self._settings.kafka_bootstrap}: {exc!r}"
            ) from exc
        if not await asyncio.to_thread(self._wait_read_to, ends, timeout):
            raise KeysError(
                f"the keys topic {self._settings.topics.keys!r} was not read up to its end "
                f"within {timeout:g}s (last error: {self._last_error})"
            )
        self._read_as_of_ms = max(self._read_as_of_ms, asked_ms)

    def _wait_read_to(self, ends: dict[int, int], timeout: float) -> bool:
        with self._read_more:
            return self._read_more.wait_for(
                lambda: all(self._read_to.get(p, 0) >= end for p, end in ends.items()), timeout
            )

    def _note_read_to(self, positions: dict[int, int]) -> None:
        with self._read_more:
            self._read_to = positions
            self._read_more.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            if self._loop is not None and self._task is not None:
                self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> KeyRingFollower:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        with self._lock:
            if self._stopping:
                loop.close()
                return
            self._loop = loop
            self._task = loop.create_task(self._follow())
        try:
            loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    async def _follow(self) -> None:
        # Read again from the beginning after any failure: applying a record twice changes
        # nothing, and the ring keeps what it had meanwhile.
        attempt = 0
        while True:
            try:
                await _read_keys(self._settings, self.ring, follow=True,
                                 caught_up=self._caught_up.set, read_to=self._note_read_to)
            except Exception as exc:
                # Whatever it was, stopping would freeze the ring (revokes never seen again):
                # say so and read again.
                self._last_error = repr(exc)
                delay = _RETRY_DELAYS_S[min(attempt, len(_RETRY_DELAYS_S) - 1)]
                log.warning("reading the keys topic failed (%r); again in %gs", exc, delay,
                            exc_info=not isinstance(exc, (KafkaError, OSError)))
                await asyncio.sleep(delay)
                attempt += 1


# --- writing ------------------------------------------------------------------------------------


async def publish_key_async(settings: Settings, record: KeyRecord) -> None:
    """Write `record` to the keys topic and return once every in-sync replica has it."""
    topic = settings.topics.keys
    producer = kafka.producer(
        kafka.access(settings), client_id="steplog-keys", acks="all", enable_idempotence=True
    )
    try:
        await _require_topic(settings)
        await producer.start()
        await producer.send_and_wait(
            topic, value=encode(record, max_bytes=settings.max_event_bytes),
            key=record.key_id.encode(),
        )
    except KafkaError as exc:
        raise KeysError(
            f"could not write key {record.key_id} to topic {topic!r} at "
            f"{settings.kafka_bootstrap}: {exc!r}"
        ) from exc
    finally:
        await producer.stop()


def publish_key(settings: Settings, record: KeyRecord) -> None:
    """`publish_key_async` for synchronous callers (the CLI, `steplog dev`'s start)."""
    asyncio.run(publish_key_async(settings, record))


async def _require_topic(settings: Settings) -> None:
    # A producer would make a broker with auto-creation create the topic (see above).
    if not await _topic_partitions(settings):
        raise _no_keys_topic(settings)


def _no_keys_topic(settings: Settings) -> KeysError:
    # A broker lists only the topics the principal may describe: on a secured one, a user
    # without access to the keys topic sees none.
    user = settings.kafka_sasl_username
    hidden = f", or user {user!r} may not read it (only services may)" if user else ""
    return KeysError(f"the keys topic {settings.topics.keys!r} does not exist{hidden} (run "
                     "`steplog topics ensure`, or start `steplog dev`)")
