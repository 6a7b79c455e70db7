"""Every setting Steplog reads, in one place: environment variables prefixed STEPLOG_.

`load_settings()` is the only way the CLI and servers read them, so that a bad value fails at
start-up with a message naming the variable and what it expects, not later in a Kafka call.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias
from urllib.parse import urlparse

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from steplog import durations
from steplog.errors import InvalidDurationError, SettingsError
from steplog.redaction import parse_key_patterns
from steplog.schemas.topics import TopicNames

ENV_PREFIX = "STEPLOG_"
# Variables under the prefix that are not settings: the test suite's own switches.
_NOT_SETTINGS_PREFIX = "STEPLOG_TEST_"
_TOPIC_PREFIX = re.compile(r"^[A-Za-z0-9._-]{0,200}$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")

SecurityProtocol: TypeAlias = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"]
SaslMechanism: TypeAlias = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
_SASL_FIELDS = ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
_TLS_FIELDS = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")


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
    replication_factor: int | None = Field(
        None, ge=1, le=16,
        description="Replicas of every topic; unset: the cluster's default.replication.factor.",
    )
    min_insync_replicas: int | None = Field(
        None, ge=1, le=16,
        description="min.insync.replicas of every topic; unset: one less than its replicas, "
        "at least 1.",
    )
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
    api_key: SecretStr | None = Field(
        None,
        description="The key Steplog's commands (`steplog sql`, `steplog runs`, the demo) send "
        "to its HTTP surfaces; unset: the local admin key `steplog dev` keeps in "
        "<data dir>/admin.key.",
    )
    max_event_bytes: int = Field(
        1024 * 1024, ge=1024, le=64 * 1024 * 1024, description="Largest encoded event accepted."
    )
    spool_dir: Path | None = Field(
        None, description="The SDK spools events to this directory when its memory buffer is "
        "full (a broker outage), and sends them first when Kafka is back, also after a "
        "restart; one process per directory. Unset: no spool (the oldest events are dropped).",
    )
    spool_max_bytes: int = Field(
        1024 * 1024 * 1024, ge=1024 * 1024,
        description="Most bytes the SDK's spool holds; past it the oldest spooled are dropped.",
    )
    state_memory_mb: int = Field(
        128, ge=1, le=1024 * 1024,
        description="Memory for the states each of the processors' state stores holds (the "
        "runs' is the one that grows) and each replay fold process's: beyond it the least "
        "recently changed go to a scratch file in TMPDIR and come back when their run gets an "
        "event. RSS grows about twice as fast as the states' bytes.",
    )
    state_retention: str = Field(
        "",
        description="How long a finished run stays in the processors' state after its end, "
        "on the log's time (e.g. 7d; units ms, s, m, h, d): then it leaves memory, disk and "
        "the changelog, and later events for it are dead-lettered `run closed`. Empty keeps "
        "every run's state forever.",
    )
    state_closed_horizon: str = Field(
        "30d",
        description="How long after it leaves (STEPLOG_STATE_RETENTION) a run's closed marker "
        "is kept: events for it meanwhile are dead-lettered `run closed`, later ones start a "
        "new run. 0 keeps no marker.",
    )
    projection_ttl: str = Field(
        "",
        description="ClickHouse TTL of the events, steps, runs and run_list rows, on their "
        "updated_at (e.g. 90d); the aggregates follow the tables. Empty keeps them forever.",
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
    worker_metrics_port: int = Field(
        0, ge=0, le=65535,
        description="Port of a `steplog worker`'s Prometheus metrics (GET /metrics) on "
        "STEPLOG_WORKER_METRICS_HOST; 0 (the default) serves none. `--metrics-port` overrides.",
    )
    worker_metrics_host: str = Field(
        "127.0.0.1",
        description="Address a worker's metrics endpoint listens on (0.0.0.0 in a container).",
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
    sql_max_execution_s: float = Field(
        60.0, gt=0, le=86_400,
        description="Longest a query on the SQL endpoint runs before the engine stops it "
        "(TIMEOUT_EXCEEDED); a request may only lower it (max_execution_time).",
    )
    sql_max_memory_mb: int = Field(
        2048, ge=16, le=1024 * 1024,
        description="Most memory one query on the SQL endpoint may use (MEMORY_LIMIT_EXCEEDED).",
    )
    sql_max_result_rows: int = Field(
        100_000_000, ge=1,
        description="Most rows a query on the SQL endpoint may return, subqueries included "
        "(TOO_MANY_ROWS_OR_BYTES).",
    )
    sql_max_result_bytes: int = Field(
        1024 * 1024 * 1024, ge=1024,
        description="Most bytes (uncompressed, in memory) a query on the SQL endpoint may "
        "return; formats that cannot stream are held whole up to it (TOO_MANY_ROWS_OR_BYTES).",
    )
    sql_max_concurrent_queries: int = Field(
        16, ge=1, le=1024,
        description="Queries the SQL endpoint runs at once; one more is answered "
        "TOO_MANY_SIMULTANEOUS_QUERIES (503) rather than queued.",
    )
    sql_max_body_mb: int = Field(
        1024, ge=1, le=1024 * 1024,
        description="Largest request body (decoded) the SQL endpoint takes: external tables and "
        "INSERT rows, spooled to disk as they arrive; past it, 413 (LIMIT_EXCEEDED). ClickHouse "
        "sets no limit on an INSERT's body and 1 GiB on a form's (http_max_multipart_form_data_size).",
    )

    kafka_version: str = Field("4.2.0", description="Apache Kafka version the local broker runs.")
    broker_heap: str = Field("512m", description="Java heap (-Xmx) of the local broker.")

    # Kafka security, for every Kafka client of Steplog (steplog/kafka.py): the protocol is
    # checked last, together with the SASL and TLS settings before it.
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        None, description="SASL mechanism of the SASL_* protocols: PLAIN, SCRAM-SHA-256 or "
        "SCRAM-SHA-512.",
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")
    kafka_ssl_cafile: Path | None = Field(
        None, description="CA bundle the brokers' certificates are checked against (SSL and "
        "SASL_SSL; default: the system's).",
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="Client certificate for mutual TLS (with STEPLOG_KAFKA_SSL_KEYFILE)."
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="Private key of the client certificate."
    )
    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="How Kafka clients connect: PLAINTEXT, SASL_PLAINTEXT, "
        "SASL_SSL or SSL.",
    )
    broker_secure: bool = Field(
        False, description="The local broker (`steplog broker start`) runs with SASL/SCRAM and "
        "ACLs; its admin's credentials are in <data dir>/kafka/admin.credentials.",
    )
    redact_keys: str = Field(
        "", description="Extra metadata, input and output keys whose values are redacted "
        "before they reach the log, comma-separated, matched as whole words whatever the case "
        "and separators (e.g. ssn,date_of_birth); added to the built-in ones (password, token, "
        "api key, card number, ...).",
    )
    record_signatures: Literal["auto", "required", "off"] = Field(
        "auto", description="Whether the processors refuse (dead-letter) events, signals and "
        "flows not signed by a key that may write their project: auto (when the Kafka "
        "connection is secured), required, off. Producers sign whenever they have a key.",
    )
    project_key: SecretStr | None = Field(
        None, description="The SDK's key for the project (`Client(project_key=...)`), sent "
        "wherever the SDK speaks HTTP: the run-result lookup on the SQL endpoint.",
    )
    otel_endpoint: str = Field(
        "", description="OTLP/HTTP traces URL `steplog otel-export` sends runs and steps to as "
        "spans, e.g. http://127.0.0.1:4318/v1/traces (README, Operations > Tracing).",
    )
    otel_headers: SecretStr | None = Field(
        None, description="Headers of the OTLP requests, key=value pairs comma-separated, "
        "values URL-encoded (as OTEL_EXPORTER_OTLP_HEADERS), e.g. authorization=Bearer%20x.",
    )
    otel_service_name: str = Field(
        "steplog", description="The service.name of the exported spans' resource."
    )
    alerts: bool = Field(
        True, description="The web service evaluates the alert rules (one evaluator per "
        "cluster: the member of the alerts group holding <prefix>alerts).",
    )
    alert_rules_file: Path | None = Field(
        None, description="YAML file of alert thresholds, per flow too (README, Operations > "
        "Alerts); unset: the defaults.",
    )
    alert_interval_s: float = Field(
        30.0, gt=0, le=3600, description="How often the alert rules are evaluated."
    )
    alert_window_s: float = Field(
        900.0, gt=0, description="The recent window the alert rules judge (failures, overdue "
        "growth, dead letters)."
    )
    alert_baseline_s: float = Field(
        86400.0, gt=0, description="The trailing period before the window a failure spike is "
        "compared with."
    )
    alert_webhooks: str = Field(
        "", description="URLs alerts are POSTed to as Steplog's JSON, comma-separated."
    )
    alert_slack_webhooks: str = Field(
        "", description="Slack incoming-webhook URLs alerts are POSTed to, comma-separated."
    )

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

    @field_validator("state_retention", "state_closed_horizon", "projection_ttl")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        duration_ms(value)
        return value

    @property
    def state_retention_ms(self) -> int | None:
        """STEPLOG_STATE_RETENTION in ms; None: off."""
        return duration_ms(self.state_retention)

    @property
    def state_closed_horizon_ms(self) -> int:
        return duration_ms(self.state_closed_horizon) or 0

    @property
    def projection_ttl_ms(self) -> int | None:
        """STEPLOG_PROJECTION_TTL in ms; None: off."""
        return duration_ms(self.projection_ttl)

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

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
    @classmethod
    def _tls_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("kafka_security_protocol")
    @classmethod
    def _kafka_security_is_complete(cls, protocol: str, info: ValidationInfo) -> str:
        # On the protocol, declared after the SASL and TLS fields, so that they are read by
        # now: a model validator's error would name no variable.
        given = {name for name in (*_SASL_FIELDS, *_TLS_FIELDS) if _is_set(info.data.get(name))}
        if protocol.startswith("SASL_"):
            missing = [name for name in _SASL_FIELDS if name not in given]
            if missing:
                raise ValueError(f"{protocol} needs {_variables(missing)} (mechanism PLAIN, "
                                 "SCRAM-SHA-256 or SCRAM-SHA-512)")
        elif extra := [name for name in _SASL_FIELDS if name in given]:
            raise ValueError(f"{_variables(extra)} given, but {protocol} uses no SASL; set "
                             "STEPLOG_KAFKA_SECURITY_PROTOCOL to SASL_PLAINTEXT or SASL_SSL")
        if protocol not in ("SSL", "SASL_SSL"):
            if extra := [name for name in _TLS_FIELDS if name in given]:
                raise ValueError(f"{_variables(extra)} given, but {protocol} uses no TLS; set "
                                 "STEPLOG_KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL")
        elif ("kafka_ssl_certfile" in given) != ("kafka_ssl_keyfile" in given):
            raise ValueError(f"{_variables(_TLS_FIELDS[1:])} go together: the client certificate "
                             "and its private key")
        return protocol

    @field_validator("redact_keys")
    @classmethod
    def _redact_keys_are_patterns(cls, value: str) -> str:
        parse_key_patterns(value)
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


def duration_ms(text: str) -> int | None:
    """A duration setting in ms, in the SDK's syntax (steplog/durations.py: "7d", "1h30m", a
    bare number of ms); None for an empty one (off). ValueError, for pydantic, when it is not
    one."""
    text = text.strip()
    if not text:
        return None
    try:
        return durations.duration_ms(int(text) if text.isdigit() else text, field="duration")
    except InvalidDurationError as exc:
        raise ValueError(str(exc).removeprefix("duration: ")) from None


def env_name(field: str) -> str:
    """The environment variable that sets a settings field."""
    return ENV_PREFIX + field.upper()


_PLACING_FIELDS = (
    "kafka_bootstrap", "clickhouse_dsn", "clickhouse_database", "topic_prefix", "data_dir",
    "events_partitions", "commands_partitions", "signals_partitions", "sql_port", "project",
    "state_memory_mb", "health_port", "health_host", "write_stall_s", "lag_growth_s",
    "lag_sample_s", "kafka_security_protocol", "state_retention", "state_closed_horizon",
    *_SASL_FIELDS, *_TLS_FIELDS,
)


def child_environment(settings: Settings, *, every_setting: bool = False) -> dict[str, str]:
    """The environment of a `steplog` child process on `settings`: this process's without its
    STEPLOG_ variables, plus the fields that place a stack (broker, engine, topics, directory,
    ports, memory, health bounds), which tests and benchmarks choose for each stack they
    start; or every field (`every_setting`: `steplog dev`'s processors are its own settings)."""
    fields = Settings.model_fields if every_setting else _PLACING_FIELDS
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)},
        **{env_name(name): text for name in fields
           if (text := _env_text(getattr(settings, name))) is not None},
    }


def _env_text(value: object) -> str | None:
    """A setting's value as its variable holds it (a secret in clear: the child needs it);
    None for an optional setting not given, which the child then does not get either."""
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def _variables(fields: Sequence[str]) -> str:
    return ", ".join(env_name(field) for field in fields)


def _is_set(value: object) -> bool:
    if isinstance(value, SecretStr):
        return bool(value.get_secret_value())
    return value is not None and value != ""


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
