"""The Prometheus alerting-rules file's shape (promtool is not available here): a rule group
document whose rules name only the metrics Steplog exports."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "steplog-alerts.yml"
METRICS = {
    "steplog_runs_ended_total", "steplog_dead_letters_total", "steplog_consumer_lag",
    "steplog_timers_pending", "steplog_runs_waiting", "steplog_clickhouse_insert_failures_total",
}
_DURATION = re.compile(r"\d+[smhdwy]")


def test_the_rules_file_is_a_prometheus_rule_group_on_steplogs_metrics() -> None:
    document: dict[str, Any] = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    assert all(set(group) == {"name", "rules"} for group in document["groups"])
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)) and len(names) == 5
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert isinstance(rule["expr"], str) and "summary" in rule["annotations"], rule
        assert rule["labels"]["severity"] in ("page", "ticket"), rule
        assert "for" not in rule or _DURATION.fullmatch(rule["for"]), rule
        used = set(re.findall(r"\bsteplog_[a-z_]+", rule["expr"]))
        assert used and used <= METRICS, (rule["alert"], used - METRICS)
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
    assert set().union(*(re.findall(r"\bsteplog_[a-z_]+", r["expr"]) for r in rules)) == METRICS
