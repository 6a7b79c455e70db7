"""The processors' configuration: topics, groups, changelogs and limits (`ProcessorConfig`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from steplog.schemas.topics import TopicNames

from .fold.state import RunState
from .fold.state_retention import StateRetention
from .membership import GroupMembership
from .state_store import S, StateStore

__all__ = ["ProcessorConfig"]


@dataclass(frozen=True)
class ProcessorConfig:
    app_id: str
    """The fold's consumer group (the events topic) and the prefix of the other groups and
    changelog topics; one per topic prefix."""
    bootstrap: str
    topics: TopicNames
    events_partitions: int
    replication_factor: int | None
    """Replicas of the topics faust makes itself; None: the cluster's default, which faust
    cannot read: `create_processor_app` needs the number (steplog/server/stack.py resolves it)."""
    max_event_bytes: int
    data_dir: Path
    state_memory_bytes: int
    """Memory for each state store's states (STEPLOG_STATE_MEMORY_MB; the runs' is the one
    that grows: the waits' and triggers' are per event name)."""
    batch_size: int = 10_000
    """The most events (or signals) handled as one batch."""
    write_interval: float = 0.2
    """The least time between two completions of a consumer, in seconds (STEPLOG_WRITE_INTERVAL_MS):
    the batches handled meanwhile are written, sent to the changelogs and committed together.
    An insert costs the engine tens of ms of CPU (and a part to merge) however few its rows,
    and each changelog send and commit is a broker request, so a trickle of events completed
    batch by batch kept a core busy (BENCHMARKS.md); rows become visible up to this much
    later. Messages (resumes) do not wait for it."""
    membership: GroupMembership = GroupMembership()
    """This process's client id and static member id in every group it joins
    (processors/membership.py)."""
    state_retention: StateRetention | None = None
    """How long finished runs stay in the run store (STEPLOG_STATE_RETENTION; None: forever)."""

    @property
    def signals_group(self) -> str:
        """The signals' consumer group: the faust app's id when the signals were a faust agent
        (and the prefix of its tables' changelogs), so the offsets it committed go on with the
        states of those changelogs (`waits_changelog`, `triggers_changelog`)."""
        return f"{self.app_id}-agents"

    @property
    def faust_app_id(self) -> str:
        """The faust app's id (it hosts the tasks and consumes nothing). Named after the flows
        agent it hosted once, so the app's internal topics keep their names."""
        return f"{self.app_id}-flows"

    @property
    def faust_leader_topic(self) -> str:
        """The faust app's one topic of its own (faust/assignor/leader_assignor.py names it)."""
        return f"{self.faust_app_id}-__assignor-__leader"

    @property
    def runs_changelog(self) -> str:
        """The run store's changelog topic (the name faust gave the `runs` table's when the
        fold was an agent, so states stored then are read back)."""
        return f"{self.app_id}-runs-changelog"

    @property
    def waits_changelog(self) -> str:
        """The waits' changelog (faust's name for the `waits` table's: states stored then are
        read back)."""
        return f"{self.signals_group}-waits-changelog"

    @property
    def triggers_changelog(self) -> str:
        """The triggers' changelog (faust's name for the `triggers` table's)."""
        return f"{self.signals_group}-triggers-changelog"

    @property
    def flow_control_group(self) -> str:
        """The flow-control consumer's group (processors/flow_control_host.py)."""
        return f"{self.app_id}-flow-control"

    @property
    def flow_control_changelog(self) -> str:
        """The flow-control keys' changelog."""
        return f"{self.flow_control_group}-changelog"

    @property
    def max_fetch_bytes(self) -> int:
        """Per partition and fetch: at least one message of the largest size allowed."""
        return max(self.max_event_bytes * 2, 4 * 1024 * 1024)

    def state_store(self, changelog: str, decode: Callable[[bytes], S]) -> StateStore[S]:
        """A state store on `changelog` (one of the three above), within these limits."""
        return StateStore(self.bootstrap, changelog, decode,
                          max_message_bytes=self.max_fetch_bytes,
                          memory_bytes=self.state_memory_bytes)

    def run_store(self) -> StateStore[RunState]:
        """The runs' state store, which finished runs leave after `state_retention`."""
        return StateStore(self.bootstrap, self.runs_changelog, RunState.from_bytes,
                          max_message_bytes=self.max_fetch_bytes,
                          memory_bytes=self.state_memory_bytes,
                          retention=self.state_retention, ended=_run_end)


def _run_end(state: RunState) -> int | None:
    return state.ended_ms
