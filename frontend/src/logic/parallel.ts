// A workflow run has no flow graph, only the steps in the order they ran. Steps whose
// [started_at, finished_at] intervals overlap ran together (Promise.all branches, seed 004's
// "parallel steps"), so they form one stage drawn side by side; stages follow one another.

export interface Interval {
  key: string;
  startMs: number | null;
  /** null: not finished (still running), which overlaps everything after its start. */
  endMs: number | null;
}

/**
 * Groups intervals into consecutive stages of overlapping ones, in start order. A step that
 * never started (missing, scheduled) gets a stage of its own at the end, in the given order.
 */
export function groupParallel(intervals: readonly Interval[]): string[][] {
  const started = intervals
    .map((interval, index) => ({ interval, index }))
    .filter(({ interval }) => interval.startMs !== null)
    .sort((a, b) => a.interval.startMs! - b.interval.startMs! || a.index - b.index);
  const stages: string[][] = [];
  let stageEnd = -Infinity;
  for (const { interval } of started) {
    const start = interval.startMs!;
    const end = interval.endMs ?? Infinity;
    const current = stages[stages.length - 1];
    // Touching ends (one step finishing the instant the next starts) are sequential, not parallel.
    if (current !== undefined && start < stageEnd) {
      current.push(interval.key);
      stageEnd = Math.max(stageEnd, end);
    } else {
      stages.push([interval.key]);
      stageEnd = end;
    }
  }
  for (const interval of intervals) {
    if (interval.startMs === null) stages.push([interval.key]);
  }
  return stages;
}

/** The edges between consecutive stages: every step of one to every step of the next. */
export function stageEdges(stages: readonly string[][]): { source: string; target: string }[] {
  const edges: { source: string; target: string }[] = [];
  for (let i = 1; i < stages.length; i++) {
    for (const source of stages[i - 1]!) {
      for (const target of stages[i]!) edges.push({ source, target });
    }
  }
  return edges;
}
