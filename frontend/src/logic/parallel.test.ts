import { describe, expect, it } from "vitest";
import { groupParallel, stageEdges } from "./parallel";

describe("groupParallel", () => {
  it("keeps steps that ran one after another in stages of their own", () => {
    const stages = groupParallel([
      { key: "charge", startMs: 0, endMs: 10 },
      { key: "ship", startMs: 10, endMs: 20 },
    ]);
    expect(stages).toEqual([["charge"], ["ship"]]);
  });

  it("puts overlapping steps side by side, in start order", () => {
    const stages = groupParallel([
      { key: "load", startMs: 0, endMs: 5 },
      { key: "prefs", startMs: 7, endMs: 15 },
      { key: "user", startMs: 6, endMs: 9 },
      { key: "plan", startMs: 12, endMs: 14 },
      { key: "join", startMs: 20, endMs: 21 },
    ]);
    expect(stages).toEqual([["load"], ["user", "prefs", "plan"], ["join"]]);
  });

  it("treats a step still running as overlapping everything after its start", () => {
    const stages = groupParallel([
      { key: "wait", startMs: 0, endMs: null },
      { key: "late", startMs: 1000, endMs: 1001 },
    ]);
    expect(stages).toEqual([["wait", "late"]]);
  });

  it("puts steps that never started last, one stage each", () => {
    const stages = groupParallel([
      { key: "missing", startMs: null, endMs: null },
      { key: "first", startMs: 1, endMs: 2 },
    ]);
    expect(stages).toEqual([["first"], ["missing"]]);
  });
});

describe("stageEdges", () => {
  it("fans out to a parallel stage and joins after it", () => {
    expect(stageEdges([["a"], ["b", "c"], ["d"]])).toEqual([
      { source: "a", target: "b" },
      { source: "a", target: "c" },
      { source: "b", target: "d" },
      { source: "c", target: "d" },
    ]);
  });
});
