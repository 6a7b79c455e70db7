"""The local broker secured: SASL/SCRAM for clients, ACLs for what each principal may do.

`LocalBroker(secure=True)` (`steplog broker start` with STEPLOG_BROKER_SECURE=true) runs with:

- one client listener, SASL_PLAINTEXT with SCRAM-SHA-512 (loopback only, as ever: TLS would
  protect nothing a local attacker could not read from the data dir anyway);
- the controller listener on SASL_PLAINTEXT with PLAIN (KRaft controllers cannot use SCRAM:
  they need the credential before the metadata log that stores SCRAM credentials is read), its
  only user the admin, so that reaching the controller port grants nothing either;
- the StandardAuthorizer: no ACL, no access, except for the admin, the super user;
- an admin SCRAM user, created when the storage is formatted (`kafka-storage format
  --add-scram`), its password drawn once and kept in `<data dir>/admin.credentials` (0600, as
  is server.properties, which holds it for the broker's own connections).

Further users are made with `add_user`, as the admin, over the Kafka protocol: the SCRAM
credential with AlterUserScramCredentials (salted here: the password never leaves this process,
nor appears on a command line as with `kafka-configs`), the ACLs with CreateAcls.
`produce_acls` and `consume_acls` are the usual grants: a principal that may only produce to
`<prefix>events` gets `produce_acls("<prefix>events")` and nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.admin import CreateAclsRequest
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactBytes,
    CompactString,
    Int8,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)
from pydantic import BaseModel, ConfigDict, SecretStr

from steplog.errors import BrokerError
from steplog.kafka import KafkaAccess, KafkaSecurity
from steplog.server.private_files import write_private

__all__ = [
    "ADMIN_USER",
    "CREDENTIALS_FILE",
    "MECHANISM",
    "Acl",
    "BrokerCredentials",
    "add_user",
    "consume_acls",
    "load_or_create_admin",
    "produce_acls",
    "secure_properties",
    "scram_format_arguments",
]

ADMIN_USER: Final = "admin"
CREDENTIALS_FILE: Final = "admin.credentials"
MECHANISM: Final = "SCRAM-SHA-512"
_USER_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
_SCRAM_SHA_512: Final = 2  # org.apache.kafka.clients.admin.ScramMechanism's type
_ITERATIONS: Final = 4096  # the least Kafka accepts for SCRAM-SHA-512
_LOGIN_WAIT_S: Final = 30.0

# Kafka's protocol codes (org.apache.kafka.common.acl / resource), as CreateAcls carries them.
_RESOURCE_TYPES: Final = {"topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
_PATTERN_LITERAL, _PATTERN_PREFIXED = 3, 4
_OPERATIONS: Final = {
    "all": 2, "read": 3, "write": 4, "create": 5, "delete": 6, "alter": 7, "describe": 8,
    "describe_configs": 10, "idempotent_write": 12,
}
_ALLOW: Final = 3

Operation = Literal[
    "all", "read", "write", "create", "delete", "alter", "describe", "describe_configs",
    "idempotent_write",
]


class BrokerCredentials(BaseModel):
    """A SCRAM user of the local broker."""

    model_config = ConfigDict(frozen=True)

    username: str
    password: SecretStr

    def access(self, bootstrap: str) -> KafkaAccess:
        """How a Steplog client connects to the broker as this user."""
        return KafkaAccess(bootstrap, KafkaSecurity(
            protocol="SASL_PLAINTEXT", sasl_mechanism=MECHANISM, username=self.username,
            password=self.password,
        ))


@dataclass(frozen=True)
class Acl:
    """One ALLOW rule: `operation` on the `resource` called `name` (or every name starting
    with it, when `prefixed`). A principal with no rule for a resource may do nothing there."""

    resource: Literal["topic", "group", "cluster", "transactional_id"]
    name: str
    operation: Operation
    prefixed: bool = False


def produce_acls(topic: str, *, prefixed: bool = False) -> list[Acl]:
    """What a producer of `topic` needs: write (which implies idempotent writes since Kafka
    3.0) and describe (metadata)."""
    return [Acl("topic", topic, "write", prefixed), Acl("topic", topic, "describe", prefixed)]


def consume_acls(topic: str, group: str | None = None, *, prefixed: bool = False) -> list[Acl]:
    """What a consumer of `topic` needs, in consumer group `group` when it commits offsets."""
    acls = [Acl("topic", topic, "read", prefixed), Acl("topic", topic, "describe", prefixed)]
    if group is not None:
        acls.append(Acl("group", group, "read"))
    return acls


def load_or_create_admin(data_dir: Path) -> BrokerCredentials:
    """The admin's credentials from `<data_dir>/admin.credentials`, drawn and written (0600)
    the first time. The file is created exclusively, so two starts racing (the broker lock
    already prevents it) could not each keep a different password."""
    path = data_dir / CREDENTIALS_FILE
    try:
        return BrokerCredentials.model_validate_json(path.read_text("utf-8"))
    except FileNotFoundError:
        pass
    except ValueError as exc:
        raise BrokerError(f"{path} is not a credentials file ({exc}); remove it only together "
                          f"with the broker's data/ (it holds the only admin password)") from None
    credentials = BrokerCredentials(
        username=ADMIN_USER, password=SecretStr(secrets.token_urlsafe(24))
    )
    text = json.dumps(
        {"username": ADMIN_USER, "password": credentials.password.get_secret_value()}
    )
    write_private(path, text + "\n", exclusive=True)
    return credentials


def scram_format_arguments(admin: BrokerCredentials) -> list[str]:
    """`kafka-storage format` arguments that create the admin's SCRAM credential in the new
    cluster's first metadata records."""
    password = admin.password.get_secret_value()
    return ["--add-scram", f"{MECHANISM}=[name={admin.username},password={password}]"]


def secure_properties(port: int, controller_port: int, loopback: str,
                      admin: BrokerCredentials) -> dict[str, str]:
    """The server.properties entries of a secured broker (they replace the PLAINTEXT ones)."""
    user, password = admin.username, admin.password.get_secret_value()
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
    return {
        "listeners": (
            f"SASL_PLAINTEXT://{loopback}:{port},CONTROLLER://{loopback}:{controller_port}"
        ),
        "advertised.listeners": f"SASL_PLAINTEXT://{loopback}:{port}",
        "inter.broker.listener.name": "SASL_PLAINTEXT",
        "listener.security.protocol.map": "SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT",
        "sasl.enabled.mechanisms": MECHANISM,
        "sasl.mechanism.inter.broker.protocol": MECHANISM,
        "listener.name.sasl_plaintext.sasl.enabled.mechanisms": MECHANISM,
        f"listener.name.sasl_plaintext.{MECHANISM.lower()}.sasl.jaas.config": (
            f'{scram} required username="{user}" password="{password}";'
        ),
        "sasl.mechanism.controller.protocol": "PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
        "listener.name.controller.plain.sasl.jaas.config": (
            f'{plain} required username="{user}" password="{password}" '
            f'user_{user}="{password}";'
        ),
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{user}",
        "allow.everyone.if.no.acl.found": "false",
    }


async def add_user(
    admin: KafkaAccess, username: str, password: str, acls: Sequence[Acl]
) -> BrokerCredentials:
    """Create (or re-key) SCRAM user `username` and grant it `acls`, as the admin; returns the
    user's credentials. BrokerError naming the user when the broker refuses either step."""
    if not _USER_NAME.fullmatch(username):
        raise BrokerError(
            f"user name {username!r}: expected 1 to 200 letters, digits, '.', '_' or '-'"
        )
    if username == admin.security.username:
        raise BrokerError(f"user name {username!r} is the admin's; choose another")
    client = AIOKafkaClient(
        bootstrap_servers=admin.bootstrap, client_id="steplog-users",
        **admin.security.client_options(),
    )
    await client.bootstrap()
    try:
        node = client.get_random_node()
        # The ACLs before the credential: a broker applies the metadata log in order, so once
        # it accepts the new login (below), it holds the user's ACLs too.
        for acl in acls:
            await _create_acl(client, node, admin.bootstrap, username, acl)
        response = await client.send(node, _AlterUserScramCredentials(username, password))
        for _, error_code, message, _tags in response.results:
            if error_code:
                raise BrokerError(
                    f"the broker at {admin.bootstrap} refused the SCRAM credential of user "
                    f"{username!r}: error {error_code} {message or ''}".rstrip()
                )
    finally:
        await client.close()
    credentials = BrokerCredentials(username=username, password=SecretStr(password))
    await _wait_for_login(admin, credentials)
    return credentials


async def _wait_for_login(admin: KafkaAccess, user: BrokerCredentials) -> None:
    """Return once the broker takes the new user's login. The controller answers
    AlterUserScramCredentials when the credential is in the metadata log; a broker applies it a
    moment later, and a login in between is refused (seen under load): so a user this returns
    can log in at once."""
    # The admin's way in (SASL_SSL, TLS files...) with the user's name and password.
    security = replace(admin.security, username=user.username, password=user.password)
    deadline = asyncio.get_running_loop().time() + _LOGIN_WAIT_S
    while True:
        client = AIOKafkaClient(bootstrap_servers=admin.bootstrap, client_id="steplog-users",
                                **security.client_options())
        try:
            await client.bootstrap()
            return
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerError(
                    f"the broker at {admin.bootstrap} still refuses user {user.username!r} "
                    f"{_LOGIN_WAIT_S:g}s after creating it: {exc}"
                ) from None
        finally:
            await client.close()
        await asyncio.sleep(0.2)


# aiokafka's protocol classes are untyped (Any) to mypy: hence the ignores on subclassing them.
class _AlterUserScramCredentialsResponse(Response):  # type: ignore[misc]
    API_KEY = 51
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", CompactArray(
            ("user", CompactString("utf-8")), ("error_code", Int16),
            ("error_message", CompactString("utf-8")), ("tags", TaggedFields),
        )),
        ("tags", TaggedFields),
    )


class _AlterUserScramCredentialsRequestV0(RequestStruct):  # type: ignore[misc]
    # KIP-554's AlterUserScramCredentials, v0 (the only version), which aiokafka lacks: written
    # from the protocol's schema with aiokafka's own types.
    FLEXIBLE_VERSION = True
    API_KEY = 51
    API_VERSION = 0
    RESPONSE_TYPE = _AlterUserScramCredentialsResponse
    SCHEMA = Schema(
        ("deletions", CompactArray(
            ("name", CompactString("utf-8")), ("mechanism", Int8), ("tags", TaggedFields),
        )),
        ("upsertions", CompactArray(
            ("name", CompactString("utf-8")), ("mechanism", Int8), ("iterations", Int32),
            ("salt", CompactBytes), ("salted_password", CompactBytes), ("tags", TaggedFields),
        )),
        ("tags", TaggedFields),
    )


_Struct = _AlterUserScramCredentialsRequestV0


class _AlterUserScramCredentials(Request[_Struct]):  # type: ignore[misc]
    API_KEY = 51

    def __init__(self, username: str, password: str) -> None:
        # The broker stores only the salted password (RFC 5802's Hi(): PBKDF2 with the
        # mechanism's hash), so it is computed here and the password never leaves this process.
        salt = secrets.token_bytes(32)
        salted = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, _ITERATIONS)
        self._upsertion: tuple[object, ...] = (
            username, _SCRAM_SHA_512, _ITERATIONS, salt, salted, {},
        )

    def build(
        self, request_struct_class: type[_AlterUserScramCredentialsRequestV0]
    ) -> _AlterUserScramCredentialsRequestV0:
        return request_struct_class([], [self._upsertion], {})


async def _create_acl(
    client: AIOKafkaClient, node: int, bootstrap: str, username: str, acl: Acl
) -> None:
    request = CreateAclsRequest(
        _RESOURCE_TYPES[acl.resource], acl.name,
        _PATTERN_PREFIXED if acl.prefixed else _PATTERN_LITERAL,
        f"User:{username}", "*", _OPERATIONS[acl.operation], _ALLOW,
    )
    response = await client.send(node, request)
    for error_code, message in response.creation_responses:
        if error_code:
            raise BrokerError(
                f"the broker at {bootstrap} refused ACL {acl} for user {username!r}: error "
                f"{error_code} {message or ''}".rstrip()
            )
