"""Every setting Steplog reads, in one place: environment variables prefixed STEPLOG_.

`load_settings()` is the only way the CLI and servers read them, so that a bad value fails at
start-up with a message naming the variable and what it expects, not later in a Kafka call.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from steplog.errors import SettingsError
from steplog.schemas.topics import TopicNames

ENV_PREFIX = "STEPLOG_"
# Variables under the prefix that are not settings: the test suite's own switches.
_NOT_SETTINGS_PREFIX = "STEPLOG_TEST_"
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]{0,200}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


class Settings(BaseSettings):
    """Steplog's configuration; each field is read from STEPLOG_<FIELD NAME IN CAPITALS>."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated host:port."
    )
    clickhouse_dsn: str = Field(
        "",
        description="chdb:///path for the embedded engine, http(s)://host:8123 for a server; "
        "empty means chdb:///<data dir>/clickhouse.",
    )
    clickhouse_database: str = Field("steplog", description="Database holding Steplog's tables.")
    data_dir: Path = Field(Path(".steplog"), description="Local state: broker logs, chDB files.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "steplog",
        description="Downloads kept across runs and clones (the Kafka broker's jars).",
    )
    topic_prefix: str = Field("steplog.", description="Prefix of every topic Steplog uses.")
    project: str = Field("default", description="Project name stamped on every event sent.")

    events_partitions: int = Field(6, ge=1, le=1000, description="Partitions of <prefix>events.")
    signals_partitions: int = Field(3, ge=1, le=1000, description="Partitions of <prefix>signals.")
    commands_partitions: int = Field(
        6, ge=1, le=1000, description="Partitions of <prefix>commands."
    )
    dlq_partitions: int = Field(1, ge=1, le=1000, description="Partitions of <prefix>dlq.")
    flows_partitions: int = Field(1, ge=1, le=1000, description="Partitions of <prefix>flows.")
    replication_factor: int = Field(1, ge=1, le=16, description="Replicas of every topic.")
    log_retention_ms: int = Field(
        -1,
        ge=-1,
        description="Retention of events, signals and commands; -1 keeps them forever, "
        "which replay from offset 0 needs.",
    )
    dlq_retention_ms: int = Field(
        30 * 24 * 3600 * 1000, ge=-1, description="Retention of the dead-letter topic."
    )

    sql_port: int = Field(
        8123, ge=1, le=65535,
        description="Port of the stack's SQL endpoint (ClickHouse HTTP) on 127.0.0.1.",
    )
    api_port: int = Field(
        8000, ge=1, le=65535,
        description="Port of `steplog dev`'s web service (dashboard, JSON API, ingestion) on "
        "127.0.0.1.",
    )
    max_event_bytes: int = Field(
        1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="Largest encoded event accepted."
    )
    state_memory_mb: int = Field(
        128, ge=1, le=1024 * 1024,
        description="Memory for the states each of the processors' state stores holds (the "
        "runs' is the one that grows) and each replay fold process's: beyond it the least "
        "recently changed go to a scratch file in TMPDIR and come back when their run gets an "
        "event. RSS grows about twice as fast as the states' bytes.",
    )
    write_interval_ms: int = Field(
        200, ge=0, le=60_000,
        description="Least time between two projection writes of the processors: rows become "
        "visible up to this much later, and the engine gets fewer, larger inserts.",
    )

    health_port: int = Field(
        8124, ge=0, le=65535,
        description="Port of each processors process's health endpoint (GET /health) on "
        "STEPLOG_HEALTH_HOST; 0 turns it off. `steplog status` finds it through the consumer "
        "group (the port is in the members' client id).",
    )
    health_host: str = Field(
        "127.0.0.1",
        description="Address the processors' health endpoint listens on (0.0.0.0 in a "
        "container, so that a probe from outside reaches it).",
    )
    write_stall_s: float = Field(
        60.0, gt=0, le=86_400,
        description="Health fails once projection writes have failed (or one write has been "
        "under way) for longer than this.",
    )
    lag_growth_s: float = Field(
        120.0, gt=0, le=86_400,
        description="Health fails once the processors' lag on the events topic has not been "
        "0 and has grown over a window this long.",
    )
    lag_sample_s: float = Field(
        5.0, gt=0, le=3600,
        description="How often each processors process samples its group's lag.",
    )
    check_timeout_s: float = Field(
        5.0, gt=0, le=600,
        description="How long `steplog status` waits for each answer (broker, SQL endpoint's "
        "SELECT 1, each health endpoint) before calling it a failure.",
    )
    stack_wait_s: float = Field(
        120.0, ge=0, le=3600,
        description="How long a command waits for a stack that is starting on the data dir "
        "(its SQL endpoint) before giving up, rather than opening the engine's files itself.",
    )

    kafka_version: str = Field("4.2.0", description="Apache Kafka version the local broker runs.")
    broker_heap: str = Field("512m", description="Java heap (-Xmx) of the local broker.")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_is_host_ports(cls, value: str) -> str:
        hosts = [h.strip() for h in value.split(",") if h.strip()]
        if not hosts or not all(_HOST_PORT.match(h) for h in hosts):
            raise ValueError("expected comma-separated host:port pairs, e.g. 127.0.0.1:9092")
        return ",".join(hosts)

    @field_validator("clickhouse_dsn")
    @classmethod
    def _dsn_has_known_scheme(cls, value: str) -> str:
        if value and urlparse(value).scheme not in ("chdb", "http", "https"):
            raise ValueError(
                "expected chdb:///absolute/path (embedded) or http(s)://host:port (server)"
            )
        return value

    @field_validator("clickhouse_database")
    @classmethod
    def _database_is_identifier(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", value):
            raise ValueError("expected a plain identifier: letters, digits and _")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        if not _TOPIC_PREFIX.match(value):
            raise ValueError("expected letters, digits, '.', '_' or '-' (Kafka topic characters)")
        return value

    @field_validator("kafka_version")
    @classmethod
    def _version_is_dotted(cls, value: str) -> str:
        if not re.fullmatch(r"\d+\.\d+\.\d+", value):
            raise ValueError("expected a release number such as 4.2.0")
        return value

    @field_validator("broker_heap")
    @classmethod
    def _heap_is_jvm_size(cls, value: str) -> str:
        if not re.fullmatch(r"\d+[kKmMgG]", value):
            raise ValueError("expected a JVM size such as 512m or 1g")
        return value

    @model_validator(mode="after")
    def _default_dsn_under_data_dir(self) -> Settings:
        if not self.clickhouse_dsn:
            dsn = f"chdb://{(self.data_dir / 'clickhouse').resolve()}"
            object.__setattr__(self, "clickhouse_dsn", dsn)
        return self

    @property
    def topics(self) -> TopicNames:
        return TopicNames.with_prefix(self.topic_prefix)

    @property
    def processors_group(self) -> str:
        """The processors' consumer group on the events topic: its committed offsets say how
        far the projections are written (docs/processors.md)."""
        return f"{self.topic_prefix}processors"


def env_name(field: str) -> str:
    """The environment variable that sets a settings field."""
    return ENV_PREFIX + field.upper()


_PLACING_FIELDS = (
    "kafka_bootstrap", "clickhouse_dsn", "clickhouse_database", "topic_prefix", "data_dir",
    "events_partitions", "commands_partitions", "signals_partitions", "sql_port", "project",
    "state_memory_mb", "health_port", "health_host", "write_stall_s", "lag_growth_s",
    "lag_sample_s",
)


def child_environment(settings: Settings, *, every_setting: bool = False) -> dict[str, str]:
    """The environment of a `steplog` child process on `settings`: this process's without its
    STEPLOG_ variables, plus the fields that place a stack (broker, engine, topics, directory,
    ports, memory, health bounds), which tests and benchmarks choose for each stack they
    start; or every field (`every_setting`: `steplog dev`'s processors are its own settings)."""
    fields = Settings.model_fields if every_setting else _PLACING_FIELDS
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)},
        **{env_name(name): str(getattr(settings, name)) for name in fields},
    }


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment (and overrides), or raise SettingsError.

    The error lists every bad variable with its value and what was expected.
    """
    problems = _unknown_variables()
    settings = None
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            given = error.get("input")
            shown = f"={given!r}" if isinstance(given, (str, int, float)) else ""
            problems.append(f"{env_name(field)}{shown}: {error['msg']}")
    if problems or settings is None:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems))
    return settings


def _unknown_variables() -> list[str]:
    """A STEPLOG_ variable that is no setting is almost always a typo that would otherwise be
    silently ignored; name it with the closest real one."""
    known = [env_name(name) for name in Settings.model_fields]
    problems = []
    for name in sorted(os.environ):
        if name.startswith(ENV_PREFIX) and not name.startswith(_NOT_SETTINGS_PREFIX):
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                problems.append(f"{name}: not a Steplog setting{hint}")
    return problems
