// Positions for the graph view's nodes and edges, laid out by dagre (a layered layout: the
// flow reads top to bottom, branches side by side).

import dagre from "@dagrejs/dagre";

export interface LayoutInputNode {
  id: string;
  width: number;
  height: number;
}

export interface LayoutNode extends LayoutInputNode {
  /** Top-left corner. */
  x: number;
  y: number;
}

export interface LayoutEdge {
  source: string;
  target: string;
  points: { x: number; y: number }[];
}

export interface GraphLayout {
  nodes: LayoutNode[];
  edges: LayoutEdge[];
  width: number;
  height: number;
}

/** Lays the nodes out; an edge naming a node that is not there is left out rather than invented. */
export function layoutGraph(
  nodes: readonly LayoutInputNode[],
  edges: readonly { source: string; target: string }[],
): GraphLayout {
  const graph = new dagre.graphlib.Graph();
  graph.setGraph({ rankdir: "TB", nodesep: 24, ranksep: 40, marginx: 8, marginy: 8 });
  graph.setDefaultEdgeLabel(() => ({}));
  for (const node of nodes) graph.setNode(node.id, { width: node.width, height: node.height });
  const known = new Set(nodes.map((n) => n.id));
  const kept = edges.filter((e) => known.has(e.source) && known.has(e.target) && e.source !== e.target);
  for (const edge of kept) graph.setEdge(edge.source, edge.target);
  dagre.layout(graph);
  const laidOut = nodes.map((node) => {
    const placed = graph.node(node.id) as { x: number; y: number };
    return { ...node, x: placed.x - node.width / 2, y: placed.y - node.height / 2 };
  });
  const laidEdges = kept.map((edge) => {
    const placed = graph.edge(edge.source, edge.target) as { points?: { x: number; y: number }[] };
    return { source: edge.source, target: edge.target, points: placed.points ?? [] };
  });
  const label = graph.graph() as { width?: number; height?: number };
  return { nodes: laidOut, edges: laidEdges, width: label.width ?? 0, height: label.height ?? 0 };
}
