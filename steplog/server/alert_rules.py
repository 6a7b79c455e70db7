"""The alert rules, pure: signals in (projections/alert_signals.py), transitions out.

`evaluate(signals, rules, firing)` compares what holds now with what is firing and returns the
transitions: a firing for each condition that newly holds, a resolution (the same `alert_id`)
for each firing one that no longer does. No clock, no I/O: the evaluator
(steplog/server/alert_evaluator.py) brings the signals and keeps `firing`.

The rules are seed 003's escalation signals. The thresholds live in a YAML file
(STEPLOG_ALERT_RULES_FILE) rather than in settings because they are per flow: a map of flows to
thresholds does not fit an environment variable, and an operator reviews the file like code.
The defaults are set so that a quiet system pages nobody: a spike needs at least 5 failures in
the window and 3 times the baseline's rate; overdue runs must have grown by 10; 3 runs stuck;
10 dead letters in the window; 50,000 events of lag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from steplog.errors import SettingsError
from steplog.projections.alert_signals import AlertSignals, FlowFailures
from steplog.projections.read_models import AlertView

__all__ = ["AlertRules", "FailureSpikeRule", "evaluate", "load_rules"]


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True


class FailureSpikeRule(_Rule):
    min_failed: int = Field(5, ge=1, description="No spike below this many failures in the "
                            "window: with a quiet baseline a pair of failures is not news.")
    factor: float = Field(3.0, gt=0, description="A spike is this many times the baseline's "
                          "failures per window.")


class OverdueGrowthRule(_Rule):
    min_increase: int = Field(10, ge=1)


class StuckRule(_Rule):
    min_runs: int = Field(3, ge=1)


class DeadLettersRule(_Rule):
    min_count: int = Field(10, ge=1)


class LagRule(_Rule):
    max_events: int = Field(50_000, ge=0)


class AlertRules(BaseModel):
    """The rules file. `flows` overrides the failure spike per flow, keyed `flow` (any project)
    or `project/flow` (that one; it wins)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    failure_spike: FailureSpikeRule = FailureSpikeRule()
    overdue_growth: OverdueGrowthRule = OverdueGrowthRule()
    stuck: StuckRule = StuckRule()
    dead_letters: DeadLettersRule = DeadLettersRule()
    lag: LagRule = LagRule()
    flows: dict[str, FailureSpikeRule] = {}

    def spike_rule(self, project: str, flow: str) -> FailureSpikeRule:
        return self.flows.get(f"{project}/{flow}") or self.flows.get(flow) or self.failure_spike


def load_rules(path: Path | None) -> AlertRules:
    """The rules of the YAML file at `path` (None: the defaults); SettingsError naming the file
    and what is wrong in it."""
    if path is None:
        return AlertRules()
    try:
        document = yaml.safe_load(path.read_text()) or {}
        return AlertRules.model_validate(document)
    except OSError as exc:
        raise SettingsError(f"alert rules file {path}: cannot read it ({exc})") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"alert rules file {path}: not YAML ({exc})") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'the document'}: {error['msg']}"
            for error in exc.errors()
        )
        raise SettingsError(f"alert rules file {path}: {problems}") from None


@dataclass(frozen=True)
class _Condition:
    rule: str
    project: str
    flow: str
    value: float
    threshold: float
    summary: str

    @property
    def key(self) -> str:
        return f"{self.rule}:{self.project}/{self.flow}" if self.flow else self.rule


def alert_key(alert: AlertView) -> str:
    """What one alert is about: its rule and scope (an `alert_id` is one firing of it)."""
    return _Condition(alert.rule, alert.project, alert.flow, 0, 0, "").key


def evaluate(
    signals: AlertSignals, rules: AlertRules, firing: Mapping[str, AlertView]
) -> list[AlertView]:
    """The transitions from `firing` (by `alert_key`) to what `signals` say holds now."""
    holding = {condition.key: condition for condition in _conditions(signals, rules)}
    at = signals.at
    transitions = []
    for key, condition in holding.items():
        if key not in firing:
            transitions.append(AlertView(
                alert_id=f"{key}@{at.isoformat()}", state="firing", rule=condition.rule,
                project=condition.project, flow=condition.flow, summary=condition.summary,
                value=condition.value, threshold=condition.threshold, fired_at=at, at=at,
            ))
    for key, alert in firing.items():
        # Lag that Kafka did not tell is unknown, not resolved.
        unknown = alert.rule == "lag" and signals.lag is None
        if key not in holding and not unknown:
            transitions.append(alert.model_copy(update={
                "state": "resolved", "at": at,
                "summary": f"resolved: {alert.summary}",
            }))
    return transitions


def _conditions(signals: AlertSignals, rules: AlertRules) -> list[_Condition]:
    window = _duration(signals.window.total_seconds())
    found = [spike for flow in signals.failures
             if (spike := _spike(flow, rules.spike_rule(flow.project, flow.flow), signals))]
    growth = signals.overdue_now - signals.overdue_window_ago
    if rules.overdue_growth.enabled and growth >= rules.overdue_growth.min_increase:
        found.append(_Condition(
            "overdue_growth", "", "", growth, rules.overdue_growth.min_increase,
            f"overdue runs grew by {growth} in {window} (now {signals.overdue_now}): the "
            "engine is falling behind on its queue",
        ))
    if rules.stuck.enabled and signals.stuck >= rules.stuck.min_runs:
        found.append(_Condition(
            "stuck", "", "", signals.stuck, rules.stuck.min_runs,
            f"{signals.stuck} runs stuck (a step running past its deadline)",
        ))
    if rules.dead_letters.enabled and signals.dead_letters_recent >= rules.dead_letters.min_count:
        found.append(_Condition(
            "dead_letters", "", "", signals.dead_letters_recent, rules.dead_letters.min_count,
            f"{signals.dead_letters_recent} dead letters in {window}",
        ))
    if rules.lag.enabled and signals.lag is not None and signals.lag > rules.lag.max_events:
        found.append(_Condition(
            "lag", "", "", signals.lag, rules.lag.max_events,
            f"the processors are {signals.lag} events behind (bound {rules.lag.max_events})",
        ))
    return found


def _spike(
    flow: FlowFailures, rule: FailureSpikeRule, signals: AlertSignals
) -> _Condition | None:
    if not rule.enabled:
        return None
    per_window = flow.baseline * (signals.window / signals.baseline)
    threshold = max(float(rule.min_failed), rule.factor * per_window)
    if flow.recent < threshold:
        return None
    return _Condition(
        "failure_spike", flow.project, flow.flow, flow.recent, threshold,
        f"{flow.recent} runs of {flow.project}/{flow.flow} failed in the last "
        f"{_duration(signals.window.total_seconds())} against {per_window:.1f} per window "
        "before: likely a deployed change broke something",
    )


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
