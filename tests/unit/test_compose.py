"""docker-compose.yml cannot run here (no Docker engine), so its consistency is tested instead."""

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from steplog.settings import Settings, env_name
from tests.cli_commands import assert_steplog_command

COMPOSE = Path(__file__).parents[2] / "docker-compose.yml"


def load_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def test_compose_has_the_multi_machine_services() -> None:
    services = load_compose()["services"]
    assert {"kafka", "clickhouse", "setup", "processors", "api"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_every_steplog_variable_in_compose_is_a_setting() -> None:
    known = {env_name(name) for name in Settings.model_fields}
    used = {
        name
        for service in load_compose()["services"].values()
        for name in (service.get("environment") or {})
        if name.startswith("STEPLOG_")
    }
    assert used, "the Steplog services should be configured through STEPLOG_ variables"
    assert used <= known, f"not settings: {sorted(used - known)}"


def test_compose_settings_are_valid_values() -> None:
    environment = load_compose()["services"]["processors"]["environment"]
    fields = {name.removeprefix("STEPLOG_").lower(): value for name, value in environment.items()
              if name.startswith("STEPLOG_")}
    assert "kafka_bootstrap" in fields  # the shared block is merged in
    Settings(**fields)


def test_published_ports_bind_to_loopback_only() -> None:
    for name, service in load_compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def _steplog_invocations() -> list[tuple[str, list[str]]]:
    """Every `steplog` command line in compose, as (service, arguments after `steplog`).

    The image's ENTRYPOINT is `steplog`, so a `command:` list is its arguments; the one-shot
    `setup` runs `steplog ...` commands through `sh -c`.
    """
    invocations: list[tuple[str, list[str]]] = []
    for name, service in load_compose()["services"].items():
        if "build" not in service:
            continue  # third-party images (kafka, clickhouse)
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


def test_every_compose_command_is_a_real_steplog_command() -> None:
    invocations = _steplog_invocations()
    assert {name for name, _ in invocations} >= {"setup", "processors", "api"}
    for service, arguments in invocations:
        assert_steplog_command(arguments, service)
