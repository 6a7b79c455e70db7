// The graph view. An instrumented run with a flow definition draws that graph, each node in
// this run's status (steps that never reported dashed and labelled missing). A workflow run
// has no graph: its steps in the order they ran, overlapping ones side by side as parallel
// branches. Both are laid out by dagre and drawn as SVG.

import { useMemo } from "react";
import { Link } from "react-router-dom";
import type { RunDetail, RunLink } from "../api";
import { GlyphIcon } from "../components/StatusGlyph";
import { childRunsByStep } from "../logic/children";
import { layoutGraph } from "../logic/graphLayout";
import { groupParallel, stageEdges } from "../logic/parallel";
import { statusLook } from "../logic/status";
import { parseTime } from "../logic/time";

const NODE_WIDTH = 200;
const NODE_HEIGHT = 52;

interface GraphNodeData {
  id: string;
  name: string;
  status: string;
  kind: string;
  child: RunLink | undefined;
}

function graphOf(detail: RunDetail): { nodes: GraphNodeData[]; edges: { source: string; target: string }[] } {
  const steps = new Map(detail.steps.map((step) => [step.step_key, step]));
  const children = childRunsByStep(detail.steps, detail.children);
  if (detail.graph !== null) {
    return {
      nodes: detail.graph.nodes.map((node) => ({
        id: node.id,
        name: node.name,
        status: node.status,
        kind: steps.get(node.id)?.kind ?? "",
        child: children.get(node.id),
      })),
      edges: detail.graph.edges,
    };
  }
  const stages = groupParallel(
    detail.steps.map((step) => ({
      key: step.step_key,
      startMs: parseTime(step.started_at),
      endMs: parseTime(step.finished_at),
    })),
  );
  return {
    nodes: detail.steps.map((step) => ({
      id: step.step_key,
      name: step.name,
      status: step.status,
      kind: step.kind,
      child: children.get(step.step_key),
    })),
    edges: stageEdges(stages),
  };
}

function truncate(text: string, max: number): string {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

export function GraphView({ detail }: { detail: RunDetail }) {
  const { nodes, layout } = useMemo(() => {
    const graph = graphOf(detail);
    return {
      nodes: new Map(graph.nodes.map((n) => [n.id, n])),
      layout: layoutGraph(
        graph.nodes.map((n) => ({ id: n.id, width: NODE_WIDTH, height: NODE_HEIGHT })),
        graph.edges,
      ),
    };
  }, [detail]);

  if (nodes.size === 0) return <p className="empty">This run has no steps yet.</p>;

  return (
    <div className="graph-scroll">
      <p className="muted small">
        {detail.graph !== null
          ? "The flow's graph; steps this run never reported are dashed."
          : "Steps in the order they ran; steps that overlapped in time are side by side."}
      </p>
      <svg
        className="graph"
        width={layout.width}
        height={layout.height}
        viewBox={`0 0 ${layout.width} ${layout.height}`}
        role="img"
        aria-label="Steps as a graph"
      >
        <defs>
          <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">
            <path d="M0 0L10 5L0 10z" className="arrow-head" />
          </marker>
        </defs>
        {layout.edges.map((edge) => (
          <path
            key={`${edge.source}->${edge.target}`}
            className="graph-edge"
            d={edge.points.map((p, i) => `${i === 0 ? "M" : "L"}${p.x} ${p.y}`).join(" ")}
            markerEnd="url(#arrow)"
          />
        ))}
        {layout.nodes.map((placed) => {
          const node = nodes.get(placed.id)!;
          const look = statusLook(node.status, node.kind);
          const body = (
            <>
              <rect className="node-box" width={placed.width} height={placed.height} rx="8" />
              <g transform="translate(10 10)">
                <GlyphIcon glyph={look.glyph} size={16} />
              </g>
              <text x="32" y="22" className="node-name">
                {truncate(node.name, node.child ? 15 : 22)}
                <title>{node.name}</title>
              </text>
              <text x="32" y="40" className="node-status">
                {truncate(node.kind ? `${look.label} · ${node.kind}` : look.label, 26)}
              </text>
            </>
          );
          return (
            <g
              key={placed.id}
              transform={`translate(${placed.x} ${placed.y})`}
              className={`graph-node tone-${look.tone}${node.status === "missing" ? " is-missing" : ""}`}
              data-testid="graph-node"
              data-step-key={node.id}
              data-status={node.status}
            >
              {node.child ? (
                <Link to={`/runs/${encodeURIComponent(node.child.run_id)}`} data-testid="graph-child-link" aria-label={`Child run ${node.child.run_id} of ${node.name}`}>
                  {body}
                  <text x={placed.width - 10} y="22" textAnchor="end" className="node-link">
                    child ↗
                  </text>
                </Link>
              ) : (
                body
              )}
            </g>
          );
        })}
      </svg>
    </div>
  );
}
