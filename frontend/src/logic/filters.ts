// The run list's filters live in the page's query string (a link is shareable; back and
// forward move between filters); this turns that query string into the API's and back.

export const RANGES = ["1h", "24h", "7d", "30d", "all"] as const;
export type Range = (typeof RANGES)[number];
export const DEFAULT_RANGE: Range = "24h";

const RANGE_MS: Record<Exclude<Range, "all">, number> = {
  "1h": 3_600_000,
  "24h": 86_400_000,
  "7d": 7 * 86_400_000,
  "30d": 30 * 86_400_000,
};

export interface RunListFilter {
  project: string;
  flow: string;
  statuses: string[];
  /** A preset window ending now, or "custom" when the link names since/until (the ops page's). */
  range: Range | "custom";
  since: string;
  until: string;
  q: string;
}

function isRange(value: string): value is Range {
  return (RANGES as readonly string[]).includes(value);
}

export function parseFilter(params: URLSearchParams): RunListFilter {
  const since = params.get("since") ?? "";
  const until = params.get("until") ?? "";
  const range = params.get("range") ?? "";
  return {
    project: params.get("project") ?? "",
    flow: params.get("flow") ?? "",
    statuses: (params.get("status") ?? "").split(",").filter((s) => s !== ""),
    range: since !== "" || until !== "" ? "custom" : isRange(range) ? range : DEFAULT_RANGE,
    since,
    until,
    q: params.get("q") ?? "",
  };
}

/**
 * The filter as query parameters, the same for the page and the API but for a preset range,
 * which `presetRange` writes (a custom range is always its `since` and `until`).
 */
function filterParams(
  filter: RunListFilter, presetRange: (params: URLSearchParams) => void,
): URLSearchParams {
  const params = new URLSearchParams();
  if (filter.project) params.set("project", filter.project);
  if (filter.flow) params.set("flow", filter.flow);
  if (filter.statuses.length > 0) params.set("status", filter.statuses.join(","));
  if (filter.range === "custom") {
    if (filter.since) params.set("since", filter.since);
    if (filter.until) params.set("until", filter.until);
  } else {
    presetRange(params);
  }
  if (filter.q) params.set("q", filter.q);
  return params;
}

/**
 * The page's own query string: only what differs from the defaults, so links stay short, and
 * the statuses' commas left readable (`status=failed,stuck`).
 */
export function filterToSearch(filter: RunListFilter): string {
  return filterParams(filter, (params) => {
    if (filter.range !== DEFAULT_RANGE) params.set("range", filter.range);
  }).toString().replaceAll("%2C", ",");
}

/** `GET /v1/runs`'s parameters; a preset range becomes `since` counted back from `nowMs`. */
export function filterToApi(filter: RunListFilter, nowMs: number): URLSearchParams {
  return filterParams(filter, (params) => {
    if (filter.range !== "all" && filter.range !== "custom") {
      params.set("since", new Date(nowMs - RANGE_MS[filter.range]).toISOString());
    }
  });
}

/** A chip click: `all` clears the statuses, any other toggles its own. */
export function toggleStatus(statuses: string[], status: string): string[] {
  if (status === "all") return [];
  return statuses.includes(status) ? statuses.filter((s) => s !== status) : [...statuses, status];
}

/** The `/runs` link behind one bucket of the ops page's failures chart. */
export function bucketRunsLink(flow: string | null, bucketIso: string, bucketMinutes: number): string {
  const start = Date.parse(bucketIso);
  const params = new URLSearchParams();
  if (flow !== null) params.set("flow", flow);
  params.set("status", "failed");
  params.set("since", new Date(start).toISOString());
  params.set("until", new Date(start + bucketMinutes * 60_000).toISOString());
  return `/runs?${params.toString()}`;
}
