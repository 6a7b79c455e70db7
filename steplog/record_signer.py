"""Which key a process signs its Kafka records with, and whether the processors check them
(schemas/record_signing.py has the scheme; README "Security" the design).

Each producing process signs with its own key: the SDK with its project key (or, without one,
the key Steplog's commands use); workers, processors, the CLI and the web service with
`client_key` (STEPLOG_API_KEY, else the data dir's admin key). The ingest API signs what it
accepted with the web service's own key: it has checked that the caller's key covers the
project already. A process with no key sends unsigned records (refused where checks are on).
"""

from __future__ import annotations

import logging

from steplog.credentials import client_key
from steplog.errors import SettingsError
from steplog.schemas.record_signing import RecordSigner
from steplog.settings import Settings, load_settings

__all__ = ["own_signer", "record_signer", "signatures_enforced"]

log = logging.getLogger("steplog.record_signer")


def record_signer(settings: Settings | None, secret: str | None = None) -> RecordSigner | None:
    """The signer of `secret` (the SDK's project key), else of `client_key(settings)`; None
    when there is no key. SettingsError when the key is not shaped like one of ours."""
    source = "the project key"
    if secret is None and settings is not None:
        secret, source = client_key(settings), "STEPLOG_API_KEY or the data dir's admin.key"
    if secret is None:
        return None
    try:
        return RecordSigner.of_secret(secret)
    except ValueError as exc:
        raise SettingsError(f"cannot sign records with {source}: {exc}") from None


def own_signer() -> RecordSigner | None:
    """The signer of this process's settings (the environment): STEPLOG_PROJECT_KEY, else
    `client_key`. What a producer signs with when its maker names no signer.

    None, with a warning, when the environment's settings do not load: a producer its maker
    configured explicitly must not fail over variables it never asked for."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        log.warning("records go unsigned: the environment's settings do not load: %s", exc)
        return None
    project_key = settings.project_key
    return record_signer(settings, project_key.get_secret_value() if project_key else None)


def signatures_enforced(settings: Settings) -> bool:
    """Whether the processors refuse records that fail the checks (processors/record_checks.py).

    `auto`: when the Kafka connection is secured. On an open broker anyone can write the keys
    topic too, so a signature would prove nothing there."""
    mode = settings.record_signatures
    if mode == "auto":
        return settings.kafka_security_protocol != "PLAINTEXT"
    return mode == "required"
