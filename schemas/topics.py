"""Topic names and what each topic is keyed by.

Keys decide ordering: Kafka orders messages only within a partition, and a key always maps to
the same partition, so everything that must be seen in order shares a key.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicNames:
    """The topics under one prefix (`steplog.` by default)."""

    events: str
    """Run and step events; key = run_id, so a run's events stay in order."""
    signals: str
    """Named events from outside or from `emit`; key = event name."""
    commands: str
    """Start / resume / cancel instructions for workers; key = run_id."""
    runner_commands: str
    """The commands of runs pinned to a runner (`run_workflow(..., runner=)`); key = run_id. A
    topic of their own so that the workers of every runner, each group reading the whole topic
    for its runner name, read only pinned commands rather than every command (and a runner
    that comes late finds its commands from the topic's start, its group being new)."""
    dlq: str
    """Dead letters: messages a processor could not use, with the reason; key = source key."""
    flows: str
    """Flow definitions (compacted: the latest per key); key = "<project>/<slug>"."""
    keys: str
    """API keys (compacted: the newest record per key, revoked ones too); key = key_id."""
    flow_control: str
    """Starts held back by flow control and their runs' ends; key = "<project>/<app>/<workflow>/
    <key value>" (schemas/flow_control.py), so a key's starts and ends are decided in order."""

    @classmethod
    def with_prefix(cls, prefix: str) -> TopicNames:
        return cls(
            events=f"{prefix}events",
            signals=f"{prefix}signals",
            commands=f"{prefix}commands",
            runner_commands=f"{prefix}runner-commands",
            dlq=f"{prefix}dlq",
            flows=f"{prefix}flows",
            keys=f"{prefix}keys",
            flow_control=f"{prefix}flow-control",
        )
