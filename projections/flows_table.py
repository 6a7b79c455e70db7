"""Reading flow definitions back from the `flows` table (processors load them at start-up)."""

from __future__ import annotations

import json
from datetime import UTC

from clickhouse_connect.driver.client import Client

from steplog.schemas.flows import FlowDefinition, FlowEdge, FlowStep


def load_flows(client: Client, database: str) -> list[FlowDefinition]:
    """The newest definition of every flow recorded in `database`."""
    result = client.query(
        "SELECT project, slug, name, step_deadline_ms, steps, edges, defined_at "
        f"FROM {database}.flows FINAL"
    )
    return [
        FlowDefinition(
            project=project,
            slug=slug,
            name=name or None,
            step_deadline_ms=deadline,
            steps=[FlowStep(**step) for step in json.loads(steps)],
            edges=[FlowEdge(**edge) for edge in json.loads(edges)],
            ts=defined_at if defined_at.tzinfo else defined_at.replace(tzinfo=UTC),
        )
        for project, slug, name, deadline, steps, edges, defined_at in result.result_rows
    ]
