"""The flow graph as the fold reads it: a FlowDefinition's steps, deadlines and reachability,
computed once per definition (`flow_graph`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from steplog.schemas.flows import FlowDefinition

from .state import RunMismatchError, RunState

__all__ = ["FlowGraph", "flow_graph", "graph_for"]


@dataclass(frozen=True, slots=True)
class FlowGraph:
    """A FlowDefinition's steps, deadlines and reachability, precomputed once per definition."""

    tag: bytes
    """Fingerprint of the definition's content: a state remembers which graph it was folded
    with, and notices when the host hands it another."""
    keys: frozenset[str]
    default_deadline_ms: int | None
    deadlines_ms: Mapping[str, int | None]
    parents: Mapping[str, tuple[str, ...]]
    """For each graph step, the steps with an edge into it."""

    @classmethod
    def of(cls, flow: FlowDefinition) -> FlowGraph:
        keys = [step.sdk_step_key for step in flow.steps]
        parents: dict[str, list[str]] = {key: [] for key in keys}
        for edge in flow.edges:
            parents[edge.target].append(edge.source)
        canonical = json.dumps(
            [
                flow.project,
                flow.slug,
                flow.step_deadline_ms,
                sorted([step.sdk_step_key, step.deadline_ms] for step in flow.steps),
                sorted([edge.source, edge.target] for edge in flow.edges),
            ]
        )
        return cls(
            tag=hashlib.blake2b(canonical.encode(), digest_size=16).digest(),
            keys=frozenset(keys),
            default_deadline_ms=flow.step_deadline_ms,
            deadlines_ms={key: flow.deadline_ms(key) for key in keys},
            parents={key: tuple(sorted(above)) for key, above in parents.items()},
        )

    def deadline_ms(self, step_key: str) -> int | None:
        """As FlowDefinition.deadline_ms: the step's own, else the flow's default."""
        return self.deadlines_ms.get(step_key, self.default_deadline_ms)

    def upstream(self, step_keys: Iterable[str], *, stop: Container[str] = ()) -> set[str]:
        """Every step from which one of `step_keys` is reachable (FlowDefinition.downstream
        reversed), not searching above the steps in `stop`."""
        found: set[str] = set()
        stack = [parent for key in step_keys for parent in self.parents.get(key, ())]
        while stack:
            key = stack.pop()
            if key not in found:
                found.add(key)
                if key not in stop:
                    stack.extend(self.parents.get(key, ()))
        return found


# Memo of FlowGraph per definition object. The entry holds the definition itself, so its id
# cannot be reused by another object while the entry exists. A cache, not state: dropping it
# changes nothing but speed.
_GRAPHS: dict[int, tuple[FlowDefinition, FlowGraph]] = {}
_GRAPH_CACHE_SIZE: Final = 256


def flow_graph(flow: FlowDefinition) -> FlowGraph:
    """The FlowGraph of a definition, computed once per definition object."""
    entry = _GRAPHS.get(id(flow))
    if entry is not None and entry[0] is flow:
        return entry[1]
    graph = FlowGraph.of(flow)
    if len(_GRAPHS) >= _GRAPH_CACHE_SIZE:
        _GRAPHS.clear()
    _GRAPHS[id(flow)] = (flow, graph)
    return graph


def graph_for(state: RunState, flow: FlowDefinition | None) -> FlowGraph | None:
    """The graph of `flow` for the run of `state` (None without a definition);
    RunMismatchError if the definition is another flow's."""
    if flow is None:
        return None
    if (flow.project, flow.slug) != (state.project, state.flow):
        raise RunMismatchError(
            f"flow definition {flow.key} handed to the fold for run "
            f"{state.project}/{state.flow}/{state.run_id}: expected {state.project}/{state.flow}"
        )
    return flow_graph(flow)

