// How times and durations read: relative in lists (absolute in a title), compact durations.

export function parseTime(iso: string | null | undefined): number | null {
  if (!iso) return null;
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? null : ms;
}

/** 850 ms, 12.3 s, 4 min 5 s, 2 h 3 min, 3 d 4 h. */
export function formatDuration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "–";
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours} h ${minutes % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** "just now", "5 min ago", "3 h ago", "2 d ago"; "in 4 min" for a time ahead. */
export function formatRelative(thenMs: number, nowMs: number): string {
  const delta = nowMs - thenMs;
  const ahead = delta < 0;
  const s = Math.abs(delta) / 1000;
  let text: string;
  if (s < 10) return "just now";
  if (s < 60) text = `${Math.floor(s)} s`;
  else if (s < 3600) text = `${Math.floor(s / 60)} min`;
  else if (s < 86400) text = `${Math.floor(s / 3600)} h`;
  else text = `${Math.floor(s / 86400)} d`;
  return ahead ? `in ${text}` : `${text} ago`;
}

/** Absolute, in the reader's zone, with seconds: for titles and detail rows. */
export function formatAbsolute(ms: number): string {
  return new Date(ms).toLocaleString(undefined, {
    year: "numeric",
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

/** The time of day in the reader's zone, where the date is plain from what is beside it (a
 * chart's time axis, a run's own page). */
export function formatClock(ms: number, withSeconds = false): string {
  return new Date(ms).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: withSeconds ? "2-digit" : undefined });
}

/** A run's recorded duration, or for a run still going the time since it started. */
export function runDuration(run: { duration_ms: number | null; started_at: string | null; finished_at: string | null }, nowMs: number): string {
  if (run.duration_ms !== null) return formatDuration(run.duration_ms);
  const started = parseTime(run.started_at);
  if (started !== null && run.finished_at === null) return `${formatDuration(nowMs - started)} so far`;
  return "–";
}
