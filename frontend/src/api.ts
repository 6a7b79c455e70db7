// The JSON the web service answers, and the calls that fetch it.
//
// These types mirror projections/read_models.py field by field (RunListItem, RunPage, RunDetail,
// StepView, AttemptView, OpsSummary, DeadLetterPage, ...): change one, change the other. Times
// are ISO 8601 strings in UTC, durations milliseconds; JSON the runs carried is passed through.
//
// Every call carries the session cookie (steplog/server/web_auth.py); POSTs add the CSRF header,
// and a 401 sends the browser to the login page (src/auth.ts).

import { CSRF_HEADER, csrfToken, type Me, toLogin } from "./auth";

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** What `status=` may name: the stored run statuses and the two derived ones (RUN_STATUS_FILTERS). */
export const RUN_STATUS_FILTERS = [
  "scheduled",
  "running",
  "retrying",
  "completed",
  "failed",
  "cancelled",
  "interrupted",
  "expired",
  "overdue",
  "stuck",
] as const;
export type RunStatusFilter = (typeof RUN_STATUS_FILTERS)[number];

/** A run in one of these has ended (schemas/statuses.py ENDED_RUN_STATUSES). */
export const ENDED_RUN_STATUSES: ReadonlySet<string> = new Set(["completed", "failed", "cancelled", "expired"]);

export interface ErrorView {
  type: string;
  message: string;
  stack: string | null;
}

export interface RunLink {
  run_id: string;
  project: string;
  flow: string;
  status: string;
}

export interface RunListItem {
  run_id: string;
  project: string;
  flow: string;
  /** The workflow app; '' for an instrumented run. */
  app: string;
  /** Derived: overdue and stuck included. */
  status: string;
  recorded_status: string;
  created_at: string;
  scheduled_for: string | null;
  started_at: string | null;
  finished_at: string | null;
  duration_ms: number | null;
  trigger_event: string;
  trigger_event_id: string;
  parent_run_id: string;
  retrigger_of: string;
  step_count: number;
  failed_step_count: number;
  error: ErrorView | null;
}

export interface RunPage {
  runs: RunListItem[];
  next_cursor: string | null;
  counts: Record<string, number>;
  newest_version: string;
}

export interface AttemptView {
  attempt: number;
  status: string;
  started_at: string | null;
  finished_at: string | null;
  duration_ms: number | null;
  error: ErrorView | null;
  output: JsonValue;
}

export interface StepView {
  step_key: string;
  name: string;
  kind: string;
  /** Derived: stuck included; missing for never-reported steps. */
  status: string;
  attempt: number;
  started_at: string | null;
  finished_at: string | null;
  duration_ms: number | null;
  deadline_at: string | null;
  input: JsonValue;
  output: JsonValue;
  error: ErrorView | null;
  metadata: JsonValue;
  /** The child run a run_workflow step started (its link); null otherwise. */
  child_run_id: string | null;
  /** Oldest first. */
  attempts: AttemptView[];
}

export interface FlowNode {
  id: string;
  name: string;
  status: string;
}

export interface FlowEdge {
  source: string;
  target: string;
}

export interface FlowGraphView {
  nodes: FlowNode[];
  edges: FlowEdge[];
}

export interface RunDetail {
  run: RunListItem;
  input: JsonValue;
  output: JsonValue;
  error: ErrorView | null;
  stuck_after: string | null;
  updated_at: string;
  /** In the order they ran (by start, then key); missing steps last. */
  steps: StepView[];
  graph: FlowGraphView | null;
  parent: RunLink | null;
  children: RunLink[];
  retrigger_of: RunLink | null;
  retriggers: RunLink[];
  trigger_data: JsonValue;
}

export interface FailureBucket {
  flow: string;
  bucket: string;
  failed: number;
  finished: number;
}

export interface SpikeView {
  flagged: boolean;
  recent_failed: number;
  baseline_failed: number;
  recent_minutes: number;
  flows: string[];
  detail: string;
}

export interface OverduePoint {
  at: string;
  count: number;
}

export interface LagView {
  total: number | null;
  partitions: Record<string, number>;
  error: string | null;
}

export interface OpsSummary {
  window_start: string;
  window_end: string;
  bucket_minutes: number;
  failures: FailureBucket[];
  spike: SpikeView;
  overdue_count: number;
  overdue_oldest_ms: number | null;
  overdue_trend: OverduePoint[];
  stuck_count: number;
  stuck_runs: RunListItem[];
  /** Null for a key that does not cover every project (dead letters have none). */
  dead_letters_24h: number | null;
  dead_letters_total: number | null;
  lag: LagView;
}

/** One transition of an alert: a firing, or its resolution (the same alert_id). */
export interface AlertView {
  alert_id: string;
  state: "firing" | "resolved";
  rule: string;
  /** Empty for a rule over the whole system. */
  project: string;
  flow: string;
  summary: string;
  value: number;
  threshold: number;
  fired_at: string;
  at: string;
}

export interface AlertPage {
  firing: AlertView[];
  recent: AlertView[];
}

export interface DeadLetterView {
  ts: string;
  reason: string;
  field: string;
  source_topic: string;
  partition: number;
  offset: number;
  key: string | null;
  value_bytes: number;
  value_truncated: boolean;
  preview: string;
}

export interface DeadLetterPage {
  dead_letters: DeadLetterView[];
  next_cursor: string | null;
  total: number;
}

export type ActionName = "cancel" | "retrigger";

// The web service's own answers (not read models): the flow filter's choices, the auto-refresh
// probe, and what an action did.
export interface FlowChoice {
  project: string;
  flow: string;
}

export interface FlowList {
  flows: FlowChoice[];
}

export interface ChangedProbe {
  newest_version: string;
}

export interface ActionResult {
  ok: boolean;
  message: string;
  /** The new run, for a retrigger. */
  run_id?: string;
}

/** A request the service answered with an error status (its `{"error": ...}` text), or none. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

async function errorText(response: Response): Promise<string> {
  const body = await response.text();
  try {
    const parsed: unknown = JSON.parse(body);
    if (parsed !== null && typeof parsed === "object" && "error" in parsed) {
      return String((parsed as { error: unknown }).error);
    }
  } catch {
    // Not JSON (a proxy's error page, say): its text is the best we have.
  }
  const text = body.trim().slice(0, 200);
  return text === "" ? `${response.status} ${response.statusText}` : text;
}

async function request<T>(path: string, init: RequestInit = {}): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, { ...init, headers: { Accept: "application/json", ...init.headers } });
  } catch (error) {
    if (error instanceof DOMException && error.name === "AbortError") throw error;
    throw new ApiError(0, `The Steplog service could not be reached (${String(error)}).`);
  }
  if (!response.ok) {
    if (response.status === 401) toLogin();
    const text = await errorText(response);
    const prefix = response.status === 503 ? "Service unavailable: " : "";
    throw new ApiError(response.status, prefix + text);
  }
  return (await response.json()) as T;
}

function withQuery(path: string, params: URLSearchParams): string {
  const query = params.toString();
  return query === "" ? path : `${path}?${query}`;
}

export const api = {
  runs: (params: URLSearchParams, signal?: AbortSignal) =>
    request<RunPage>(withQuery("/v1/runs", params), { signal }),
  runsChanged: (params: URLSearchParams, signal?: AbortSignal) =>
    request<ChangedProbe>(withQuery("/v1/runs/changed", params), { signal }),
  run: (runId: string, signal?: AbortSignal) =>
    request<RunDetail>(`/v1/runs/${encodeURIComponent(runId)}`, { signal }),
  action: (runId: string, action: ActionName, reason?: string) =>
    request<ActionResult>(`/v1/runs/${encodeURIComponent(runId)}/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", [CSRF_HEADER]: csrfToken() },
      body: JSON.stringify(reason ? { reason } : {}),
    }),
  ops: (signal?: AbortSignal) => request<OpsSummary>("/v1/ops", { signal }),
  alerts: (signal?: AbortSignal) => request<AlertPage>("/v1/alerts", { signal }),
  deadLetters: (params: URLSearchParams, signal?: AbortSignal) =>
    request<DeadLetterPage>(withQuery("/v1/dead-letters", params), { signal }),
  flows: (signal?: AbortSignal) => request<FlowList>("/v1/flows", { signal }),
  me: (signal?: AbortSignal) => request<Me>("/v1/me", { signal }),
};

export function isAbort(error: unknown): boolean {
  return error instanceof DOMException && error.name === "AbortError";
}

export function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
