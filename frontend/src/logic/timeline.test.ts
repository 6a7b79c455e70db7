import { describe, expect, it } from "vitest";
import type { StepView } from "../api";
import { elapsedTicks, timelineRows, timelineWindow, timeToX } from "./timeline";

const T0 = Date.parse("2025-01-01T00:00:00Z");
const iso = (offsetMs: number): string => new Date(T0 + offsetMs).toISOString();

function step(overrides: Partial<StepView>): StepView {
  return {
    step_key: "s",
    name: "s",
    kind: "run",
    status: "completed",
    attempt: 1,
    started_at: null,
    finished_at: null,
    duration_ms: null,
    deadline_at: null,
    input: null,
    output: null,
    error: null,
    metadata: null,
    child_run_id: null,
    attempts: [],
    ...overrides,
  };
}

describe("timeToX", () => {
  it("maps the window linearly onto the width", () => {
    const x = timeToX(1000, 3000, 100);
    expect(x(1000)).toBe(0);
    expect(x(2000)).toBe(50);
    expect(x(3000)).toBe(100);
  });

  it("clamps times outside the window", () => {
    const x = timeToX(1000, 3000, 100);
    expect(x(0)).toBe(0);
    expect(x(9000)).toBe(100);
  });

  it("survives a window of zero length", () => {
    expect(timeToX(5, 5, 100)(5)).toBe(0);
  });
});

describe("timelineRows", () => {
  it("draws each attempt as its own segment, a failed retry included", () => {
    const [row] = timelineRows(
      [
        step({
          step_key: "charge",
          status: "completed",
          attempts: [
            { attempt: 1, status: "failed", started_at: iso(0), finished_at: iso(100), duration_ms: 100, error: { type: "Timeout", message: "slow", stack: null }, output: null },
            { attempt: 2, status: "completed", started_at: iso(1100), finished_at: iso(1200), duration_ms: 100, error: null, output: 1 },
          ],
        }),
      ],
      T0 + 5000,
    );
    expect(row!.segments.map((s) => [s.attempt, s.status, s.startMs - T0, s.endMs - T0, s.wait])).toEqual([
      [1, "failed", 0, 100, false],
      [2, "completed", 1100, 1200, false],
    ]);
    expect(row!.segments[0]!.error?.message).toBe("slow");
  });

  it("marks sleeps and waits as gaps and lets an unfinished one run to now", () => {
    const [row] = timelineRows(
      [step({ kind: "sleep", status: "running", attempts: [{ attempt: 1, status: "running", started_at: iso(0), finished_at: null, duration_ms: null, error: null, output: null }] })],
      T0 + 700,
    );
    expect(row!.segments).toMatchObject([{ wait: true, open: true, startMs: T0, endMs: T0 + 700 }]);
  });

  it("falls back to the step's own times when it lists no attempts, and skips steps never started", () => {
    const rows = timelineRows([step({ started_at: iso(0), finished_at: iso(10) }), step({ status: "missing" })], T0);
    expect(rows[0]!.segments).toHaveLength(1);
    expect(rows[1]!.segments).toHaveLength(0);
  });
});

describe("timelineWindow", () => {
  const run = { created_at: iso(0), started_at: iso(10), finished_at: iso(1000) };

  it("spans an ended run from its start to its end", () => {
    expect(timelineWindow(run, [], T0 + 99_999, true)).toEqual({ startMs: T0 + 10, endMs: T0 + 1000 });
  });

  it("runs to now while the run is going", () => {
    const going = { ...run, finished_at: null };
    expect(timelineWindow(going, [], T0 + 5000, false)).toEqual({ startMs: T0 + 10, endMs: T0 + 5000 });
  });
});

describe("elapsedTicks", () => {
  it("picks a round step giving at most the asked number of ticks", () => {
    expect(elapsedTicks(10_000, 6)).toEqual([0, 2000, 4000, 6000, 8000, 10_000]);
    expect(elapsedTicks(90 * 60_000, 6)).toEqual([0, 15, 30, 45, 60, 75, 90].map((m) => m * 60_000));
  });
});
