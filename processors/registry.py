"""The workflow registry: which apps define which workflows, from the flows topic.

Workers register a `WorkflowDefinition` per workflow on the compacted flows topic at start. The
processors need them to choose the app of a `start_run` whose app is open: a child run (the
calling app first, then any other) and a run scheduled without an app.

Where they come from (the simplest option that cannot miss one): at start-up the processors read
the flows topic from its beginning to its current end (`read_workflow_definitions`; compaction
keeps it small: the latest definition per key), before the faust worker starts; then every
process follows the whole topic from its beginning (`definitions.follow_definitions`), so it
learns every later one too, whichever partitions its groups give it. No table and no
changelog: the topic is the registry's store.
"""

from __future__ import annotations

import logging

from steplog.errors import InvalidEventError, TopicError
from steplog.projections.log_reader import read_log
from steplog.schemas.codec import decode_flows_message
from steplog.schemas.flows import WorkflowDefinition

from .effects import AppResolution

__all__ = ["WorkflowRegistry", "read_workflow_definitions"]

log = logging.getLogger("steplog.processors")


class WorkflowRegistry:
    """The newest definition of each (project, app, workflow)."""

    def __init__(self) -> None:
        self._definitions: dict[tuple[str, str], dict[str, WorkflowDefinition]] = {}

    def __len__(self) -> int:
        return sum(len(apps) for apps in self._definitions.values())

    def remember(self, definition: WorkflowDefinition) -> bool:
        """Keep `definition` unless a newer one of the same key is known; True if it is new to
        the registry (a workflow or app it did not know), which may resolve a waiting start."""
        apps = self._definitions.setdefault((definition.project, definition.name), {})
        held = apps.get(definition.app)
        if held is None or held.ts <= definition.ts:
            apps[definition.app] = definition
        return held is None

    def apps(self, project: str, workflow: str) -> list[str]:
        """The apps that define `workflow` in `project`, by name."""
        return sorted(self._definitions.get((project, workflow), {}))

    def resolve(self, project: str, workflow: str, resolution: AppResolution) -> str | None:
        """The app to start `workflow` in: `resolution.preferred` if it defines it, else (unless
        `exact`) the first other app by name that does; None when no app will do."""
        apps = self._definitions.get((project, workflow), {})
        if resolution.preferred in apps:
            return resolution.preferred
        if resolution.exact or not apps:
            return None
        return min(apps)

    def definition(self, project: str, app: str, workflow: str) -> WorkflowDefinition | None:
        return self._definitions.get((project, workflow), {}).get(app)


async def read_workflow_definitions(
    bootstrap: str, topic: str, *, max_bytes: int
) -> list[WorkflowDefinition]:
    """Every workflow definition on the flows topic up to its current end (flow definitions
    and unusable messages are skipped: the flows agent records or dead-letters them). A topic
    that does not exist yet holds none."""
    found: list[WorkflowDefinition] = []
    try:
        async for record in read_log(bootstrap, topic):
            try:
                message = decode_flows_message(record.value or b"", max_bytes=max_bytes)
            except InvalidEventError:
                continue
            if isinstance(message, WorkflowDefinition):
                found.append(message)
    except TopicError:
        log.warning("flows topic %s does not exist yet: no workflow definitions", topic)
    return found
