"""Signed records: how a Kafka record names the key that wrote it, so that the processors can
refuse what a key of project A writes as project B's (README, "Security").

Every record of the topics that carry the applications' project data (events, signals, flows)
carries two headers: `steplog-key`, the key id (`sk_...`), and `steplog-mac`, HMAC-SHA256 over
the topic's name, a 0 byte and the record's value, keyed with the key's *signing key*. The
topic is in the MAC so that a signed signal cannot be replayed as an event; the 0 byte keeps
the topic and the value apart (no topic name holds one).

The signing key is derived from the secret (HMAC-SHA256(secret, `SIGNING_CONTEXT`)), so a
producer signs with nothing but the secret it already has; the processors cannot derive it
(they never see secrets, only their SHA-256), so the key's record carries it
(schemas/keys.py: which is why only service principals may read the keys topic).

Cost: a signer keeps, per topic, the HMAC state after the key and the topic's bytes, and per
record copies it and hashes the value: about 2 µs for an event of 400 bytes on the dev machine
(a one-shot `hmac.digest`, keyed again every time, took 3.4; README "Security").
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from .keys import key_id_of_secret

__all__ = [
    "KEY_HEADER",
    "MAC_HEADER",
    "SIGNING_CONTEXT",
    "Headers",
    "RecordSigner",
    "derive_signing_key",
    "read_signature",
    "record_mac",
    "signature_headers",
]

KEY_HEADER: Final = "steplog-key"
MAC_HEADER: Final = "steplog-mac"
SIGNING_CONTEXT: Final = b"steplog record signing v1"
"""What the signing key is derived for: a new version of the scheme derives other keys."""

Headers = list[tuple[str, bytes]]
"""Kafka record headers as aiokafka takes and gives them."""


def derive_signing_key(secret: str) -> bytes:
    """The signing key of a secret (`slk_...`): HMAC-SHA256(secret, SIGNING_CONTEXT)."""
    return hmac.digest(secret.encode(), SIGNING_CONTEXT, "sha256")


def record_mac(signing_key: bytes, topic: str, value: bytes) -> bytes:
    """HMAC-SHA256 over `topic`, a 0 byte and `value`."""
    return hmac.digest(signing_key, b"%s\x00%s" % (topic.encode(), value), "sha256")


@dataclass(frozen=True, slots=True)
class RecordSigner:
    """Signs records as one key (what a producing process holds: its own key), and checks
    the MACs of a key's records (what the processors hold per key)."""

    key_id: str
    signing_key: bytes
    _keyed: dict[str, hmac.HMAC] = field(default_factory=dict, compare=False, repr=False)
    """Per topic: the HMAC state after the topic's bytes, copied for each record."""

    @classmethod
    def of_secret(cls, secret: str) -> RecordSigner:
        """The signer of a secret; ValueError when the secret is not shaped like a key's."""
        key_id = key_id_of_secret(secret)
        if key_id is None:
            raise ValueError("not a Steplog key: a key looks like slk_sk_<12 hex>_<43 chars>")
        return cls(key_id, derive_signing_key(secret))

    def headers(self, topic: str, value: bytes) -> Headers:
        """The record's signature headers."""
        return [(KEY_HEADER, self.key_id.encode()), (MAC_HEADER, self.mac(topic, value))]

    def mac(self, topic: str, value: bytes) -> bytes:
        """The record's MAC, as `record_mac` makes it."""
        keyed = self._keyed.get(topic)
        if keyed is None:
            keyed = self._keyed[topic] = hmac.new(
                self.signing_key, topic.encode() + b"\x00", "sha256"
            )
        mac = keyed.copy()
        mac.update(value)
        return mac.digest()

    def matches(self, topic: str, value: bytes, mac: bytes) -> bool:
        """Whether `mac` is the record's MAC (compared in constant time)."""
        return hmac.compare_digest(self.mac(topic, value), mac)


def signature_headers(signer: RecordSigner | None, topic: str, value: bytes) -> Headers | None:
    """The headers of a record sent by a producer that holds `signer` (None: unsigned)."""
    return signer.headers(topic, value) if signer is not None else None


def read_signature(headers: Iterable[tuple[str, bytes]] | None) -> tuple[str, bytes] | None:
    """The key id and MAC a record's headers carry; None when either is missing (or the key id
    is not text)."""
    key_id: str | None = None
    mac: bytes | None = None
    for name, value in headers or ():
        if name == KEY_HEADER:
            try:
                key_id = value.decode()
            except UnicodeDecodeError:
                return None
        elif name == MAC_HEADER:
            mac = value
    if key_id is None or mac is None:
        return None
    return key_id, mac
