"""Every Kafka client Steplog makes is made here: one place for what they all share.

The clients are aiokafka's, as the callers know them; these functions only fill in what every
client of ours has in common (the bootstrap servers, the security of the connection, and a
client id that says which part of Steplog it is, visible in the broker's logs and in
`describe_groups`). Callers pass their own options (acks, group, fetch sizes, ...) by aiokafka's
names.

Where to connect and as whom is a `KafkaAccess`: the bootstrap servers and a `KafkaSecurity`
(PLAINTEXT, SASL over plaintext or TLS with PLAIN or SCRAM, TLS with a client certificate),
made from the STEPLOG_KAFKA_* settings by `access(settings)`. A caller may still hand over a
bare bootstrap string: it then connects with this process's own security settings (its
STEPLOG_KAFKA_* variables), which is what every process of a deployment runs with; a test or a
tool that speaks to a cluster as someone else (another SCRAM user) passes a KafkaAccess.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest
from pydantic import SecretStr

from steplog.settings import SaslMechanism, SecurityProtocol, Settings, load_settings

__all__ = [
    "PLAINTEXT",
    "Kafka",
    "KafkaAccess",
    "KafkaSecurity",
    "SaslMechanism",
    "SecurityProtocol",
    "FAILOVER_OPTIONS",
    "FAILOVER_PRODUCER_OPTIONS",
    "access",
    "admin_client",
    "consumer",
    "producer",
    "resolve",
    "start",
]

_CLIENT_ID = "steplog"

# Failover is Kafka's: when a broker dies, the controller fences it after
# broker.session.timeout.ms (the broker's setting; 9 s by default) and names new leaders from
# the in-sync replicas at once. These settings bound how long a client of ours takes to follow
# (README, "Failover"); every producer and consumer gets them unless it says otherwise.
FAILOVER_OPTIONS: Final = {
    # A request that fails (the old leader is gone, or says it is no leader any more) forces a
    # metadata refresh; the retry follows this backoff. So a client resumes within about
    # this long (plus a round trip) of the metadata naming the new leader.
    "retry_backoff_ms": 100,
    # With nothing failing, metadata is refreshed this often (aiokafka's default: 5 minutes):
    # how stale a client's view of leaders and partitions may get while it sends nothing.
    "metadata_max_age_ms": 5_000,
}
FAILOVER_PRODUCER_OPTIONS: Final = {
    # How long a request (and a connection attempt) to a broker may go unanswered: what a
    # broker that vanished without closing its sockets (a host lost, not a process killed,
    # whose sockets the OS resets at once) costs before the retry goes to the new leader.
    # aiokafka's default is 40 s; a produce request waits on the broker for the in-sync
    # replicas at most this long, too.
    "request_timeout_ms": 5_000,
}


@dataclass(frozen=True)
class KafkaSecurity:
    """How a client proves who it is and protects the connection. The password is a
    SecretStr, so that a repr in a log or a traceback never shows it."""

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    cafile: Path | None = None
    """CA bundle the broker's certificate is checked against (default: the system's)."""
    certfile: Path | None = None
    """Client certificate (mTLS), with keyfile."""
    keyfile: Path | None = None

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of a TLS protocol (None for the plaintext ones)."""
        if not self.uses_tls:
            return None
        context: ssl.SSLContext = create_ssl_context(
            cafile=self.cafile, certfile=self.certfile, keyfile=self.keyfile
        )
        return context

    def client_options(self) -> dict[str, Any]:
        """aiokafka's keyword arguments for this security (the same for every client)."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.username
            options["sasl_plain_password"] = (
                self.password.get_secret_value() if self.password is not None else None
            )
        return options


PLAINTEXT: Final = KafkaSecurity()


@dataclass(frozen=True)
class KafkaAccess:
    """Where to connect (bootstrap servers, comma-separated host:port) and as whom."""

    bootstrap: str
    security: KafkaSecurity = PLAINTEXT

    def __str__(self) -> str:
        # Messages name the cluster ("Kafka at 127.0.0.1:9092"), never the credentials.
        return self.bootstrap

    def as_user(self, username: str, password: str) -> KafkaAccess:
        """The same cluster as another SASL user (same protocol and mechanism)."""
        security = replace(self.security, username=username, password=SecretStr(password))
        return replace(self, security=security)


Kafka: TypeAlias = KafkaAccess | str
"""A KafkaAccess, or a bare bootstrap string meaning "with this process's security"."""


def access(settings: Settings) -> KafkaAccess:
    """The cluster and security the settings name (STEPLOG_KAFKA_BOOTSTRAP and the
    STEPLOG_KAFKA_SECURITY_PROTOCOL, _SASL_* and _SSL_* settings, checked together when the
    settings were loaded)."""
    return KafkaAccess(
        settings.kafka_bootstrap,
        KafkaSecurity(
            protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        ),
    )


def resolve(kafka: Kafka) -> KafkaAccess:
    """A KafkaAccess as it is; a bare bootstrap string with this process's security."""
    if isinstance(kafka, KafkaAccess):
        return kafka
    return replace(access(load_settings()), bootstrap=kafka)


def consumer(kafka: Kafka, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer of `topics` (none: assign or subscribe later)."""
    return AIOKafkaConsumer(*topics, **_options(kafka, {**FAILOVER_OPTIONS, **options}))


def producer(kafka: Kafka, **options: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**_options(kafka, {**FAILOVER_OPTIONS, **options}))


def admin_client(kafka: Kafka, **options: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**_options(kafka, options))


async def start_or_stop(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """`client.start()`; if that fails or is cancelled (a rebalance or a stop during start-up),
    the client is stopped before the error goes on: aiokafka logs a client collected without
    being stopped as an ERROR, and keeps its connections until then."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise


async def start(client: AIOKafkaConsumer | AIOKafkaProducer | AIOKafkaAdminClient,
                kafka: Kafka) -> None:
    """`client.start()`, saying why the cluster refused the connection when it did: aiokafka
    only logs the reason (a wrong password, a TLS handshake) and raises "Unable to bootstrap".
    The error stays a KafkaConnectionError, which callers retry: a user may be created or a
    password fixed while they wait."""
    try:
        await client.start()
    except KafkaConnectionError as exc:
        target = resolve(kafka)
        reason = await _connection_refusal(target)
        if reason is None:
            raise
        security = target.security
        whom = f" as user {security.username!r}" if security.sasl_mechanism else ""
        raise KafkaConnectionError(
            f"cannot connect to Kafka at {target.bootstrap} ({security.protocol}{whom}): "
            f"{reason}"
        ) from exc


async def _connection_refusal(target: KafkaAccess, timeout: float = 10.0) -> str | None:
    """Why one connection to the first bootstrap server fails (None: it does not)."""
    host, _, port = target.bootstrap.split(",")[0].rpartition(":")
    try:
        connection = await asyncio.wait_for(
            create_conn(host.strip("[]"), int(port), request_timeout_ms=int(timeout * 1000),
                        **target.security.client_options()),
            timeout,
        )
    except (OSError, KafkaError, asyncio.TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        # Connected: a broker that expects SASL or TLS still drops the first request.
        await asyncio.wait_for(connection.send(MetadataRequest([])), timeout)
    except (OSError, KafkaError, asyncio.TimeoutError) as exc:
        return (f"the broker dropped a {target.security.protocol} request ({type(exc).__name__}); "
                "does it expect another STEPLOG_KAFKA_SECURITY_PROTOCOL?")
    finally:
        connection.close()
    return None


def _options(kafka: Kafka, options: dict[str, Any]) -> dict[str, Any]:
    target = resolve(kafka)
    options.setdefault("client_id", _CLIENT_ID)
    return {"bootstrap_servers": target.bootstrap, **target.security.client_options(), **options}
