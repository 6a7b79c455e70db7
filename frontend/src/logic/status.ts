// Which glyph and words stand for a status: the dashboard never says anything by colour alone
// (seed 002: "a status glyph (check, X, spinner) so you can scan a failing run quickly").

export type Glyph =
  | "check"
  | "cross"
  | "spinner"
  | "clock"
  | "skip"
  | "missing"
  | "stuck"
  | "pause"
  | "ban"
  | "dot";

/** The colour family a status is drawn in (CSS class `tone-<tone>`), always beside a glyph. */
export type Tone = "ok" | "bad" | "active" | "waiting" | "muted" | "warn";

export interface StatusLook {
  glyph: Glyph;
  tone: Tone;
  /** What a reader sees next to the glyph (the status, or what a running step is doing). */
  label: string;
}

/** Steps that park the run rather than work: drawn as a wait, with a clock. */
const WAIT_KINDS: ReadonlySet<string> = new Set(["sleep", "sleep_until", "wait_for_event"]);
const WAIT_STATUSES: ReadonlySet<string> = new Set(["sleeping", "waiting"]);

export function isWaitStep(kind: string, status: string): boolean {
  return WAIT_KINDS.has(kind) || WAIT_STATUSES.has(status);
}

/** A step that started a child run (StepKind run_workflow; "invoke" in the seeds' words). */
export function isInvokeStep(kind: string): boolean {
  return kind === "run_workflow" || kind === "invoke";
}

const LOOKS: Record<string, StatusLook> = {
  completed: { glyph: "check", tone: "ok", label: "completed" },
  failed: { glyph: "cross", tone: "bad", label: "failed" },
  running: { glyph: "spinner", tone: "active", label: "running" },
  retrying: { glyph: "spinner", tone: "warn", label: "retrying" },
  scheduled: { glyph: "clock", tone: "muted", label: "scheduled" },
  sleeping: { glyph: "clock", tone: "waiting", label: "sleeping" },
  waiting: { glyph: "clock", tone: "waiting", label: "waiting" },
  overdue: { glyph: "clock", tone: "warn", label: "overdue" },
  skipped: { glyph: "skip", tone: "muted", label: "skipped" },
  missing: { glyph: "missing", tone: "muted", label: "missing" },
  stuck: { glyph: "stuck", tone: "warn", label: "stuck" },
  interrupted: { glyph: "pause", tone: "warn", label: "interrupted" },
  cancelled: { glyph: "ban", tone: "muted", label: "cancelled" },
  expired: { glyph: "clock", tone: "muted", label: "expired" },
};

/**
 * The look of a run's or a step's status. A running step of a waiting kind (a sleep, a
 * wait_for_event) shows a clock and says what it waits for, since "running" would mislead.
 */
export function statusLook(status: string, kind = ""): StatusLook {
  if (status === "running" && WAIT_KINDS.has(kind)) {
    return kind === "wait_for_event" ? LOOKS.waiting! : LOOKS.sleeping!;
  }
  return LOOKS[status] ?? { glyph: "dot", tone: "muted", label: status || "unknown" };
}
