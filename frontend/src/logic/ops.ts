// The ops page's failures chart as series: every 5-minute bucket of the window (empty ones
// too), one row of counts per flow, stacked so that each flow's band sits on the ones below.

import type { FailureBucket } from "../api";

export interface FailureSeries {
  /** Bucket starts, epoch milliseconds, oldest first. */
  buckets: number[];
  /** Most failures first: the bottom band. */
  flows: string[];
  /** counts[flow][bucket]. */
  counts: number[][];
}

export function failureSeries(
  failures: readonly FailureBucket[],
  windowStartIso: string,
  windowEndIso: string,
  bucketMinutes: number,
): FailureSeries {
  const bucketMs = bucketMinutes * 60_000;
  const first = Math.floor(Date.parse(windowStartIso) / bucketMs) * bucketMs;
  const end = Date.parse(windowEndIso);
  const buckets: number[] = [];
  for (let t = first; t < end; t += bucketMs) buckets.push(t);
  const totals = new Map<string, number>();
  for (const f of failures) totals.set(f.flow, (totals.get(f.flow) ?? 0) + f.failed);
  const flows = [...totals.keys()].sort((a, b) => totals.get(b)! - totals.get(a)! || a.localeCompare(b));
  const row = new Map(flows.map((flow) => [flow, buckets.map(() => 0)]));
  for (const f of failures) {
    const index = Math.round((Date.parse(f.bucket) - first) / bucketMs);
    const counts = row.get(f.flow)!;
    if (index >= 0 && index < counts.length) counts[index]! += f.failed;
  }
  return { buckets, flows, counts: flows.map((flow) => row.get(flow)!) };
}

/** Running sums bottom-up: stacked[i][b] = counts[0][b] + ... + counts[i][b]. */
export function stackCounts(counts: readonly number[][]): number[][] {
  const stacked: number[][] = [];
  counts.forEach((row, i) => {
    const below = stacked[i - 1];
    stacked.push(row.map((n, b) => n + (below?.[b] ?? 0)));
  });
  return stacked;
}

/** The flow whose band holds `value` in bucket `index`; null above the stack (all flows). */
export function flowAt(flows: readonly string[], stacked: readonly number[][], index: number, value: number): string | null {
  let below = 0;
  for (let i = 0; i < flows.length; i++) {
    const top = stacked[i]?.[index] ?? 0;
    if (top > below && value >= below && value <= top) return flows[i]!;
    below = top;
  }
  return null;
}

/** The bucket a pointer over bucket `index` means: itself if it has failures, else the nearest
 * one within `reach` buckets that has (a burst's bar is drawn wider than its bucket, so a
 * pointer on the bar may be over an empty neighbour), else `index` itself. */
export function snapToBar(totals: readonly number[], index: number, reach: number): number {
  if ((totals[index] ?? 0) > 0) return index;
  for (let distance = 1; distance <= reach; distance++) {
    if ((totals[index - distance] ?? 0) > 0) return index - distance;
    if ((totals[index + distance] ?? 0) > 0) return index + distance;
  }
  return index;
}

/** What bucket `index` holds, for the chart's hover readout: "checkout 3 · billing 1". */
export function bucketSummary(series: FailureSeries, index: number): string {
  const parts = series.flows.flatMap((flow, i) => {
    const failed = series.counts[i]?.[index] ?? 0;
    return failed > 0 ? [`${flow} ${failed}`] : [];
  });
  return parts.length > 0 ? parts.join(" · ") : "no failed runs";
}
