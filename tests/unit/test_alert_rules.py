"""The alert rules, pure: signals in, firing and resolved transitions out."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from steplog.errors import SettingsError
from steplog.projections.alert_signals import AlertSignals, FlowFailures
from steplog.projections.read_models import AlertView
from steplog.server.alert_rules import AlertRules, alert_key, evaluate, load_rules
from steplog.server.alert_webhooks import slack_body

AT = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
QUIET = AlertSignals(
    at=AT, window=timedelta(minutes=15), baseline=timedelta(hours=24), failures=(),
    overdue_now=0, overdue_window_ago=0, stuck=0, dead_letters_recent=0, lag=0,
)


def failing(recent: int, baseline: int = 0, flow: str = "checkout") -> AlertSignals:
    return replace(QUIET, failures=(FlowFailures("acme", flow, recent, baseline),))


def firing_of(transitions: list[AlertView]) -> dict[str, AlertView]:
    return {alert_key(alert): alert for alert in transitions if alert.state == "firing"}


def test_a_quiet_system_fires_nothing() -> None:
    assert evaluate(QUIET, AlertRules(), {}) == []


def test_a_few_failures_are_not_a_spike_however_quiet_the_baseline() -> None:
    assert evaluate(failing(4), AlertRules(), {}) == []


def test_a_spike_fires_once_then_resolves_with_the_same_id() -> None:
    rules = AlertRules()
    [fired] = evaluate(failing(6), rules, {})
    assert (fired.state, fired.rule, fired.project, fired.flow) == (
        "firing", "failure_spike", "acme", "checkout")
    assert fired.value == 6 and fired.threshold == 5
    firing = firing_of([fired])
    assert evaluate(replace(failing(9), at=AT + timedelta(minutes=1)), rules, firing) == []
    later = AT + timedelta(minutes=20)
    [resolved] = evaluate(replace(QUIET, at=later), rules, firing)
    assert (resolved.state, resolved.alert_id, resolved.fired_at, resolved.at) == (
        "resolved", fired.alert_id, AT, later)


def test_a_flow_that_always_fails_this_much_is_not_spiking() -> None:
    # 96 windows of 15 minutes in the baseline: 960 failures are 10 per window; 25 < 3 x 10.
    assert evaluate(failing(25, baseline=960), AlertRules(), {}) == []
    assert [a.rule for a in evaluate(failing(31, baseline=960), AlertRules(), {})] == [
        "failure_spike"]


def test_thresholds_per_flow_override_the_default_and_project_flow_wins() -> None:
    rules = AlertRules.model_validate({"flows": {
        "checkout": {"min_failed": 50}, "acme/checkout": {"min_failed": 2},
        "nightly": {"enabled": False},
    }})
    assert len(evaluate(failing(3), rules, {})) == 1
    assert evaluate(failing(30, flow="nightly"), rules, {}) == []
    assert evaluate(replace(failing(30, flow="checkout"), failures=(
        FlowFailures("other", "checkout", 30, 0),)), rules, {}) == []


def test_system_rules_fire_on_their_bounds() -> None:
    signals = replace(QUIET, overdue_now=12, overdue_window_ago=1, stuck=3,
                      dead_letters_recent=10, lag=50_001)
    fired = evaluate(signals, AlertRules(), {})
    assert sorted(a.rule for a in fired) == ["dead_letters", "lag", "overdue_growth", "stuck"]
    assert evaluate(replace(signals, overdue_window_ago=3, stuck=2, dead_letters_recent=9,
                            lag=50_000), AlertRules(), {}) == []


def test_unknown_lag_neither_fires_nor_resolves() -> None:
    [lagging] = evaluate(replace(QUIET, lag=10**6), AlertRules(), {})
    assert evaluate(replace(QUIET, lag=None), AlertRules(), firing_of([lagging])) == []


def test_the_rules_file_is_read_and_its_mistakes_are_named(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yml"
    path.write_text("stuck:\n  min_runs: 1\nflows:\n  checkout:\n    factor: 5\n")
    rules = load_rules(path)
    assert rules.stuck.min_runs == 1 and rules.spike_rule("acme", "checkout").factor == 5
    assert load_rules(None) == AlertRules()
    path.write_text("stuck:\n  min_runs: 0\nlagg: {}\n")
    with pytest.raises(SettingsError, match=r"alerts.yml: stuck.min_runs: .*; lagg: Extra"):
        load_rules(path)


def test_slack_gets_a_text_message() -> None:
    [fired] = evaluate(failing(6), AlertRules(), {})
    assert slack_body(fired)["text"].startswith(":rotating_light: FIRING [failure_spike] 6 runs")
