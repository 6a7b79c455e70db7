"""docker-compose.yml cannot run here (no Docker engine), so its consistency is tested instead."""

from pathlib import Path
from typing import Any

import yaml

from steplog.settings import Settings, env_name

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
    fields = {name.removeprefix("STEPLOG_").lower(): value for name, value in environment.items()}
    Settings(**fields)


def test_published_ports_bind_to_loopback_only() -> None:
    for name, service in load_compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
