"""docker-compose.yml cannot run here (no Docker engine), so its consistency is tested instead."""

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from steplog.settings import Settings, env_name
from tests.cli_commands import assert_steplog_command

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SECURE = ROOT / "docker-compose.secure.yml"
# Compose's `${NAME:?message}` (required variable), as a user's .env would fill it.
_REQUIRED = re.compile(r"\$\{([A-Z_]+):\?[^}]*\}")


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    document = yaml.safe_load(_REQUIRED.sub("from-the-env-file", path.read_text()))
    assert isinstance(document, dict)
    return document


def test_compose_has_the_multi_machine_services() -> None:
    services = load_compose()["services"]
    assert {"kafka", "clickhouse", "setup", "processors", "api"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


@pytest.mark.parametrize("path", [COMPOSE, SECURE], ids=lambda path: path.name)
def test_every_steplog_variable_in_compose_is_a_setting(path: Path) -> None:
    known = {env_name(name) for name in Settings.model_fields}
    used = {
        name
        for service in load_compose(path)["services"].values()
        for name in (service.get("environment") or {})
        if name.startswith("STEPLOG_")
    }
    assert used, "the Steplog services should be configured through STEPLOG_ variables"
    assert used <= known, f"not settings: {sorted(used - known)}"


def _steplog_fields(environment: dict[str, Any]) -> dict[str, Any]:
    return {name.removeprefix("STEPLOG_").lower(): value for name, value in environment.items()
            if name.startswith("STEPLOG_")}


def test_compose_settings_are_valid_values() -> None:
    fields = _steplog_fields(load_compose()["services"]["processors"]["environment"])
    assert "kafka_bootstrap" in fields  # the shared block is merged in
    Settings(**fields)


def test_the_secured_override_configures_every_steplog_service_alike(tmp_path: Path) -> None:
    """Compose merges an override's `environment` into the base's, key by key."""
    base, secure = load_compose()["services"], load_compose(SECURE)["services"]
    assert set(secure) <= set(base), "the override adds no service of its own"
    mounted_ca = tmp_path / "ca.pem"  # the CA file the container mounts must exist to load
    mounted_ca.touch()
    steplog_services = [name for name, service in base.items() if "build" in service]
    assert set(steplog_services) <= set(secure), "every Steplog service logs in to Kafka"
    for name in steplog_services:
        fields = {**_steplog_fields(base[name]["environment"]),
                  **_steplog_fields(secure[name]["environment"])}
        assert fields["kafka_ssl_cafile"] in secure[name]["volumes"][0], name
        settings = Settings(**{**fields, "kafka_ssl_cafile": str(mounted_ca)})
        assert settings.kafka_security_protocol == "SASL_SSL", name
        assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512", name


def test_the_secured_override_mounts_files_of_the_repository() -> None:
    for name, service in load_compose(SECURE)["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith("./"):
                continue  # a named volume
            path = ROOT / source
            in_certs = path.parent.name == "certs"  # made by make-certs.sh, never committed
            assert in_certs or path.is_file(), f"{name} mounts {source}, which is missing"
    for script in ("make-certs.sh", "kafka-start.sh"):
        assert (ROOT / "deploy" / "secure" / script).stat().st_mode & 0o111, script


@pytest.mark.parametrize("path", [COMPOSE, SECURE], ids=lambda path: path.name)
def test_published_ports_bind_to_loopback_only(path: Path) -> None:
    for name, service in load_compose(path)["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def _steplog_invocations(path: Path = COMPOSE) -> list[tuple[str, list[str]]]:
    """Every `steplog` command line in compose, as (service, arguments after `steplog`).

    The image's ENTRYPOINT is `steplog`, so a `command:` list is its arguments; the one-shot
    `setup` runs `steplog ...` commands through `sh -c`.
    """
    invocations: list[tuple[str, list[str]]] = []
    for name, service in load_compose(path)["services"].items():
        if name in ("kafka", "clickhouse"):
            continue  # third-party images
        if "command" in service:
            command = service["command"]
            assert isinstance(command, list), f"{name}: write command as a list of arguments"
            invocations.append((name, [str(part) for part in command]))
        entrypoint = service.get("entrypoint")
        if entrypoint is not None:
            assert entrypoint[:2] == ["sh", "-c"], f"{name}: unexpected entrypoint {entrypoint}"
            for line in re.split(r"&&|\|\||;", entrypoint[2]):
                words = shlex.split(line)
                assert words and words[0] == "steplog", f"{name}: {line.strip()!r} is not steplog"
                invocations.append((name, words[1:]))
    return invocations


def test_dockerfile_entrypoint_is_steplog() -> None:
    dockerfile = (COMPOSE.parent / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["steplog"]' in dockerfile


@pytest.mark.parametrize("path", [COMPOSE, SECURE], ids=lambda path: path.name)
def test_every_compose_command_is_a_real_steplog_command(path: Path) -> None:
    invocations = _steplog_invocations(path)
    assert {name for name, _ in invocations} >= ({"setup", "processors", "api"} if path == COMPOSE
                                                 else {"setup"})
    for service, arguments in invocations:
        assert_steplog_command(arguments, service)
