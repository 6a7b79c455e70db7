"""Project isolation on the Kafka path: on a secured broker the processors fold only the records
signed by a key that may write their project, dead-letter the rest with the reason (another
project's, unsigned, tampered with, written after the key's revoke), and a replay of the log
refuses exactly the same records and rebuilds the same rows."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from steplog import kafka
from steplog.credentials import client_key
from steplog.kafka import KafkaAccess
from steplog.producers.sender import EventSender
from steplog.projections.log_reader import read_log
from steplog.schemas.codec import decode_dead_letter, encode
from steplog.schemas.events import StepCompleted, StepStarted, new_event_id
from steplog.schemas.record_signing import Headers, RecordSigner
from steplog.server.broker import LocalBroker
from steplog.server.key_ring import mint_key, publish_key
from steplog.settings import Settings, load_settings
from steplog.topics import ensure_topics, topic_specs
from tests.conftest import (
    RunningProcessors, replay_dry_run, start_processors, wait_for, with_own_engine,
)

Record = tuple[bytes, bytes, Headers | None]


@pytest.fixture(scope="module")
def signed_settings(
    secure_broker: LocalBroker, admin: KafkaAccess, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """The stack's settings: logged in as the broker's admin, so signatures are enforced."""
    password = admin.security.password
    assert password is not None
    settings = load_settings(
        kafka_bootstrap=secure_broker.bootstrap, topic_prefix="signed.",
        data_dir=tmp_path_factory.mktemp("signed-steplog"), events_partitions=1,
        commands_partitions=1, signals_partitions=1,
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=admin.security.username,
        kafka_sasl_password=password.get_secret_value(),
    )
    asyncio.run(ensure_topics(admin, topic_specs(settings)))
    return with_own_engine(settings, tmp_path_factory.mktemp("signed-engine"))


@pytest.fixture(scope="module")
def processors(signed_settings: Settings, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[RunningProcessors]:
    running = start_processors(signed_settings, tmp_path_factory.mktemp("logs") / "p.log")
    try:
        yield running
    finally:
        running.stop()


def _run(project: str, run_id: str) -> list[bytes]:
    """A run's two events (a step started, then completed), encoded."""
    return [encode((StepStarted if seq == 0 else StepCompleted)(
        event_id=new_event_id(), project=project, flow="checkout", run_id=run_id,
        step_key="charge", ts=datetime(2026, 12, 1, 12, 0, seq, tzinfo=UTC), seq=seq,
    )) for seq in (0, 1)]


def _signed(topic: str, signer: RecordSigner | None, project: str, run_id: str) -> list[Record]:
    return [(run_id.encode(), value, signer.headers(topic, value) if signer else None)
            for value in _run(project, run_id)]


async def _produce(settings: Settings, records: list[Record]) -> None:
    producer = kafka.producer(kafka.access(settings), acks="all")
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(settings.topics.events, value, key=key, headers=headers)
    finally:
        await producer.stop()


def _reasons(settings: Settings) -> dict[str, str]:
    """The dead letters' reasons by the run id (the key) of the refused record."""

    async def read() -> dict[str, str]:
        letters = [decode_dead_letter(r.value) async for r in
                   read_log(kafka.access(settings), settings.topics.dlq)]
        return {base64.b64decode(r.key_b64 or "").decode(): r.reason for r in letters}

    return asyncio.run(read())


def _completed(running: RunningProcessors, run_id: str) -> bool:
    return running.sql.command(
        f"SELECT count() FROM steps_current WHERE run_id = '{run_id}' AND status = 'completed'"
    ) == 1


def test_only_records_signed_for_their_project_fold_and_replay_refuses_the_same(
    signed_settings: Settings, processors: RunningProcessors
) -> None:
    settings = signed_settings
    topic = settings.topics.events
    secret, key_a = mint_key("ingest", ["shop-a"], "project A's service")
    publish_key(settings, key_a)
    signer_a = RecordSigner.of_secret(secret)
    admin_secret = client_key(settings)
    assert admin_secret is not None  # the local admin key start_processors made
    signer_admin = RecordSigner.of_secret(admin_secret)

    tampered = [(key, value.replace(b"charge", b"refund"), headers)
                for key, value, headers in _signed(topic, signer_a, "shop-a", "tampered")]
    # Project A's run through the SDK's sender (it signs as it fills its record batches).
    sender = EventSender(kafka.access(settings), topic, signer=signer_a)
    try:
        for value in _run("shop-a", "a-run"):
            sender.send(b"a-run", value)
        assert sender.flush(timeout=30)
    finally:
        sender.close()
    asyncio.run(_produce(settings, [
        *_signed(topic, signer_a, "shop-b", "b-run"),
        *_signed(topic, None, "shop-a", "unsigned"),
        *tampered,
    ]))
    wait_for(lambda: _completed(processors, "a-run"), what="project A's run, signed by A")
    wait_for(lambda: len(_reasons(settings)) == 3, what="three runs' dead letters")

    publish_key(settings, key_a.revoked(datetime.now(UTC)))
    asyncio.run(_produce(settings, [
        *_signed(topic, signer_a, "shop-a", "after-revoke"),
        *_signed(topic, signer_admin, "shop-a", "canary"),
    ]))
    wait_for(lambda: _completed(processors, "canary"), what="the canary behind the revoked key")
    assert processors.sql.command("SELECT count() FROM runs FINAL") == 2  # a-run, canary
    processors.stop()  # replay reads the engine's files

    reasons = _reasons(settings)
    assert set(reasons) == {"b-run", "unsigned", "tampered", "after-revoke"}, reasons
    assert "key does not cover the record's project" in reasons["b-run"]
    assert "'shop-b'" in reasons["b-run"] and key_a.key_id in reasons["b-run"]
    assert reasons["unsigned"].startswith("unsigned record for project 'shop-a'")
    assert "signature does not match" in reasons["tampered"]
    assert "key revoked at" in reasons["after-revoke"]
    letters = asyncio.run(_count_dead_letters(settings))
    assert letters == 8  # two events of each refused run

    replay = replay_dry_run(settings, 1, ("events", "runs", "steps"))
    counts = re.search(r"(\d+) invalid skipped", replay)
    assert counts is not None and int(counts.group(1)) == letters, replay


async def _count_dead_letters(settings: Settings) -> int:
    return len([r async for r in read_log(kafka.access(settings), settings.topics.dlq)])

