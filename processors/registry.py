"""The workflow registry: which apps define which workflows, from the flows topic.

Workers register a `WorkflowDefinition` per workflow on the compacted flows topic at start. The
processors need them to choose the app of a `start_run` whose app is open: a child run (the
calling app first, then any other) and a run scheduled without an app.

Where they come from (the simplest option that cannot miss one): every processors process
follows the compacted flows topic from its beginning (`definitions.DefinitionsFollower`;
compaction keeps it small: the latest definition per key), and folds nothing until it has read
what the topic held when it started; it learns every later one too, whichever partitions its
groups give it. No table and no changelog: the topic is the registry's store.
"""

from __future__ import annotations

from steplog.schemas.flows import WorkflowDefinition

from .fold.effects import AppResolution

__all__ = ["WorkflowRegistry"]


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
