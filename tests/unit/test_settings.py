from pathlib import Path

import pytest

from steplog.errors import SettingsError
from steplog.settings import load_settings


def test_defaults_use_the_embedded_engine_under_the_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STEPLOG_CLICKHOUSE_DSN", "STEPLOG_DATA_DIR", "STEPLOG_KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.clickhouse_dsn == f"chdb://{(Path('.steplog') / 'clickhouse').resolve()}"
    assert settings.topics.events == "steplog.events"
    assert settings.topics.dlq == "steplog.dlq"


def test_environment_variables_override_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPLOG_TOPIC_PREFIX", "shop.")
    monkeypatch.setenv("STEPLOG_EVENTS_PARTITIONS", "12")
    monkeypatch.setenv("STEPLOG_CLICKHOUSE_DSN", "http://127.0.0.1:8123")
    settings = load_settings()
    assert settings.topics.signals == "shop.signals"
    assert settings.events_partitions == 12
    assert settings.clickhouse_dsn == "http://127.0.0.1:8123"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("STEPLOG_KAFKA_BOOTSTRAP", "localhost", "host:port"),
        ("STEPLOG_CLICKHOUSE_DSN", "postgres://x", "chdb:///absolute/path"),
        ("STEPLOG_EVENTS_PARTITIONS", "many", "integer"),
        ("STEPLOG_EVENTS_PARTITIONS", "0", "greater than or equal to 1"),
        ("STEPLOG_TOPIC_PREFIX", "bad prefix!", "Kafka topic characters"),
        ("STEPLOG_CLICKHOUSE_DATABASE", "my-db", "plain identifier"),
        ("STEPLOG_BROKER_HEAP", "lots", "JVM size"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_is_expected(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"{variable}={value!r}" in message
    assert expected in message


def test_every_bad_variable_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPLOG_EVENTS_PARTITIONS", "x")
    monkeypatch.setenv("STEPLOG_DLQ_PARTITIONS", "y")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "STEPLOG_EVENTS_PARTITIONS" in str(caught.value)
    assert "STEPLOG_DLQ_PARTITIONS" in str(caught.value)


def test_an_unknown_settings_argument_is_refused() -> None:
    with pytest.raises(SettingsError, match="STEPLOG_KAFKA_BOOTSTRAPS"):
        load_settings(kafka_bootstraps="127.0.0.1:1")


def test_a_misspelt_variable_is_named_with_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEPLOG_KAFKA_BOOSTRAP", "127.0.0.1:9092")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "STEPLOG_KAFKA_BOOSTRAP: not a Steplog setting; did you mean STEPLOG_KAFKA_BOOTSTRAP?" in str(
        caught.value
    )
