// The timeline view's geometry: one shared time axis from the run's start to its end (or now),
// and on it each attempt of each step as a bar, or as a gap for steps that only wait
// (seed 004: "a long sleep/waitForEvent shows as a gap and parallel steps overlap").

import type { ErrorView, StepView } from "../api";
import { isWaitStep } from "./status";
import { parseTime } from "./time";

export interface TimelineSegment {
  stepKey: string;
  attempt: number;
  status: string;
  startMs: number;
  endMs: number;
  /** Not finished yet: its end is "now" and grows. */
  open: boolean;
  /** A sleep or wait: time the run spent parked, drawn as a gap rather than a bar. */
  wait: boolean;
  error: ErrorView | null;
}

export interface TimelineRow {
  step: StepView;
  segments: TimelineSegment[];
}

/** Each step's attempts (oldest first) as segments; a step that never started has none. */
export function timelineRows(steps: readonly StepView[], nowMs: number): TimelineRow[] {
  return steps.map((step) => {
    const wait = isWaitStep(step.kind, step.status);
    const attempts =
      step.attempts.length > 0
        ? step.attempts
        : [{ attempt: step.attempt, status: step.status, started_at: step.started_at, finished_at: step.finished_at, error: step.error }];
    const segments: TimelineSegment[] = [];
    for (const attempt of attempts) {
      const startMs = parseTime(attempt.started_at);
      if (startMs === null) continue;
      const finished = parseTime(attempt.finished_at);
      segments.push({
        stepKey: step.step_key,
        attempt: attempt.attempt,
        status: attempt.status,
        startMs,
        endMs: Math.max(startMs, finished ?? nowMs),
        open: finished === null,
        wait,
        error: attempt.error,
      });
    }
    return { step, segments };
  });
}

/**
 * The axis' window: from the run's start (its creation if it never started) to its end, or to
 * now while it runs; widened to every segment, since a step's clock may differ from the run's.
 */
export function timelineWindow(
  run: { created_at: string; started_at: string | null; finished_at: string | null },
  rows: readonly TimelineRow[],
  nowMs: number,
  ended: boolean,
): { startMs: number; endMs: number } {
  const segments = rows.flatMap((row) => row.segments);
  const starts = segments.map((s) => s.startMs);
  const ends = segments.map((s) => s.endMs);
  const runStart = parseTime(run.started_at) ?? parseTime(run.created_at) ?? nowMs;
  const runEnd = ended ? (parseTime(run.finished_at) ?? Math.max(runStart, ...ends)) : nowMs;
  const startMs = Math.min(runStart, ...starts);
  const endMs = Math.max(runEnd, ...ends);
  return { startMs, endMs: Math.max(endMs, startMs + 1) };
}

/** Maps a time onto [0, width] over [startMs, endMs], clamped (a zero-length window is 1 ms). */
export function timeToX(startMs: number, endMs: number, width: number): (t: number) => number {
  const span = Math.max(1, endMs - startMs);
  return (t: number) => Math.min(width, Math.max(0, ((t - startMs) / span) * width));
}

const TICK_STEPS_MS = [
  1, 2, 5, 10, 20, 50, 100, 200, 500,
  1_000, 2_000, 5_000, 10_000, 15_000, 30_000,
  60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000,
  3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000,
  86_400_000, 172_800_000, 604_800_000,
];

/** Tick offsets from the window's start (0 included): round steps, at most `maxTicks` + 1. */
export function elapsedTicks(spanMs: number, maxTicks: number): number[] {
  const step = TICK_STEPS_MS.find((s) => spanMs / s <= maxTicks) ?? Math.ceil(spanMs / maxTicks);
  const ticks: number[] = [];
  for (let t = 0; t <= spanMs; t += step) ticks.push(t);
  return ticks;
}
