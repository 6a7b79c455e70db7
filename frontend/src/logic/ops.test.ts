import { describe, expect, it } from "vitest";
import { bucketSummary, failureSeries, flowAt, snapToBar, stackCounts } from "./ops";

describe("failureSeries", () => {
  it("fills every bucket of the window and orders flows by failures", () => {
    const series = failureSeries(
      [
        { flow: "a", bucket: "2025-01-01T00:05:00Z", failed: 1, finished: 3 },
        { flow: "b", bucket: "2025-01-01T00:00:00Z", failed: 2, finished: 2 },
        { flow: "b", bucket: "2025-01-01T00:10:00Z", failed: 1, finished: 1 },
      ],
      "2025-01-01T00:00:00Z",
      "2025-01-01T00:15:00Z",
      5,
    );
    expect(series.buckets).toHaveLength(3);
    expect(series.flows).toEqual(["b", "a"]);
    expect(series.counts).toEqual([
      [2, 0, 1],
      [0, 1, 0],
    ]);
  });
});

describe("stacked bands", () => {
  const stacked = stackCounts([
    [2, 0],
    [3, 1],
  ]);

  it("sums bottom-up", () => {
    expect(stacked).toEqual([
      [2, 0],
      [5, 1],
    ]);
  });

  it("finds the flow under a point, and none above the stack", () => {
    expect(flowAt(["b", "a"], stacked, 0, 1)).toBe("b");
    expect(flowAt(["b", "a"], stacked, 0, 4)).toBe("a");
    expect(flowAt(["b", "a"], stacked, 0, 7)).toBeNull();
    expect(flowAt(["b", "a"], stacked, 1, 0.5)).toBe("a");
  });
});

describe("snapToBar", () => {
  const totals = [0, 0, 4, 0, 0, 0, 1];

  it("keeps a bucket that has failures", () => {
    expect(snapToBar(totals, 2, 2)).toBe(2);
  });

  it("moves to the nearest bar within reach, the earlier one on a tie", () => {
    expect(snapToBar(totals, 3, 1)).toBe(2);
    expect(snapToBar(totals, 4, 2)).toBe(2);
    expect(snapToBar(totals, 5, 1)).toBe(6);
  });

  it("stays put with no bar within reach", () => {
    expect(snapToBar(totals, 4, 1)).toBe(4);
    expect(snapToBar(totals, 0, 0)).toBe(0);
  });
});

describe("bucketSummary", () => {
  const series = { buckets: [0, 300_000], flows: ["b", "a"], counts: [[2, 0], [1, 0]] };

  it("names each flow that failed in the bucket, with its count", () => {
    expect(bucketSummary(series, 0)).toBe("b 2 · a 1");
  });

  it("says so when none did", () => {
    expect(bucketSummary(series, 1)).toBe("no failed runs");
  });
});
