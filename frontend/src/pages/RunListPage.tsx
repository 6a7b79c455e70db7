// The run list (`/runs`, `/`): filters held in the query string, newest runs first, older pages
// on demand, and an auto-refresh that polls the cheap `changed` probe every few seconds and
// reloads the page only when a matching run was written.

import { type FormEvent, useEffect, useMemo, useRef, useState } from "react";
import { Link, useSearchParams } from "react-router-dom";
import { api, describeError, type FlowChoice, RUN_STATUS_FILTERS, type RunListItem } from "../api";
import { StatusGlyph } from "../components/StatusGlyph";
import { TimeText } from "../components/TimeText";
import { useNow, usePolling } from "../hooks/usePolling";
import { filterToApi, filterToSearch, parseFilter, RANGES, type RunListFilter, toggleStatus } from "../logic/filters";
import { parseTime, runDuration } from "../logic/time";

const PAGE_SIZE = 50;
const REFRESH_MS = 5000;

interface LoadedRuns {
  /** The page's query string these rows answer; a different one means a fresh load. */
  filterKey: string;
  /** The API parameters of the first page, which the `changed` probe repeats. */
  apiParams: URLSearchParams;
  version: string;
  runs: RunListItem[];
  counts: Record<string, number>;
  nextCursor: string | null;
  /** Older pages were appended: a refresh keeps them below the new first page. */
  extended: boolean;
}

function pageParams(base: URLSearchParams, cursor: string | null): URLSearchParams {
  const params = new URLSearchParams(base);
  params.set("limit", String(PAGE_SIZE));
  if (cursor !== null) params.set("cursor", cursor);
  return params;
}

export function RunListPage() {
  const [searchParams, setSearchParams] = useSearchParams();
  const filter = useMemo(() => parseFilter(searchParams), [searchParams]);
  const filterKey = filterToSearch(filter);
  const now = useNow(10_000);
  const [loaded, setLoaded] = useState<LoadedRuns | null>(null);
  const [flows, setFlows] = useState<FlowChoice[]>([]);
  const [olderError, setOlderError] = useState<string | null>(null);
  const [loadingOlder, setLoadingOlder] = useState(false);
  const loadedRef = useRef(loaded);
  loadedRef.current = loaded;

  usePolling(async (signal) => setFlows((await api.flows(signal)).flows), null, []);

  usePolling(
    async (signal) => {
      const current = loadedRef.current;
      if (current !== null && current.filterKey === filterKey) {
        const probe = await api.runsChanged(current.apiParams, signal);
        if (probe.newest_version === current.version) return;
      }
      const apiParams = filterToApi(filter, Date.now());
      const page = await api.runs(pageParams(apiParams, null), signal);
      setLoaded((previous) => {
        const keepOlder = previous !== null && previous.filterKey === filterKey && previous.extended;
        const fresh = new Set(page.runs.map((r) => r.run_id));
        return {
          filterKey,
          apiParams,
          version: page.newest_version,
          counts: page.counts,
          runs: keepOlder ? [...page.runs, ...previous.runs.filter((r) => !fresh.has(r.run_id))] : page.runs,
          nextCursor: keepOlder ? previous.nextCursor : page.next_cursor,
          extended: keepOlder,
        };
      });
    },
    REFRESH_MS,
    [filterKey],
  );

  const loadOlder = async (): Promise<void> => {
    if (loaded === null || loaded.nextCursor === null) return;
    setLoadingOlder(true);
    setOlderError(null);
    try {
      const page = await api.runs(pageParams(loaded.apiParams, loaded.nextCursor));
      setLoaded((previous) => {
        if (previous === null || previous.filterKey !== loaded.filterKey) return previous;
        const seen = new Set(previous.runs.map((r) => r.run_id));
        return {
          ...previous,
          runs: [...previous.runs, ...page.runs.filter((r) => !seen.has(r.run_id))],
          nextCursor: page.next_cursor,
          extended: true,
        };
      });
    } catch (error) {
      setOlderError(describeError(error));
    } finally {
      setLoadingOlder(false);
    }
  };

  const update = (changes: Partial<RunListFilter>, replace = false): void => {
    setSearchParams(filterToSearch({ ...filter, ...changes }), { replace });
  };

  const current = loaded !== null && loaded.filterKey === filterKey ? loaded : null;

  return (
    <section>
      <h1>Runs</h1>
      <Filters filter={filter} flows={flows} counts={current?.counts ?? null} update={update} />
      {current === null ? (
        <p className="muted">Loading runs…</p>
      ) : current.runs.length === 0 ? (
        <p className="empty">No runs match these filters.</p>
      ) : (
        <RunTable runs={current.runs} now={now} />
      )}
      {current?.nextCursor ? (
        <div className="paging">
          <button type="button" className="button" data-testid="load-older" disabled={loadingOlder} onClick={() => void loadOlder()}>
            {loadingOlder ? "Loading…" : "Load older runs"}
          </button>
          {olderError ? <p className="inline-error" role="alert">{olderError}</p> : null}
        </div>
      ) : null}
    </section>
  );
}

function Filters({
  filter,
  flows,
  counts,
  update,
}: {
  filter: RunListFilter;
  flows: FlowChoice[];
  counts: Record<string, number> | null;
  update: (changes: Partial<RunListFilter>, replace?: boolean) => void;
}) {
  const projects = [...new Set(flows.map((f) => f.project))].sort();
  const flowNames = [
    ...new Set(flows.filter((f) => !filter.project || f.project === filter.project).map((f) => f.flow)),
  ].sort();
  if (filter.flow && !flowNames.includes(filter.flow)) flowNames.unshift(filter.flow);
  const total = counts === null ? null : Object.values(counts).reduce((sum, n) => sum + n, 0);

  return (
    <div className="filters">
      <div className="filter-row">
        {projects.length > 1 || filter.project ? (
          <label className="field">
            <span>Project</span>
            <select data-testid="project-filter" value={filter.project} onChange={(e) => update({ project: e.target.value, flow: "" })}>
              <option value="">All projects</option>
              {projects.map((p) => (
                <option key={p} value={p}>
                  {p}
                </option>
              ))}
            </select>
          </label>
        ) : null}
        <label className="field">
          <span>Flow</span>
          <select data-testid="flow-filter" value={filter.flow} onChange={(e) => update({ flow: e.target.value })}>
            <option value="">All flows</option>
            {flowNames.map((f) => (
              <option key={f} value={f}>
                {f}
              </option>
            ))}
          </select>
        </label>
        <label className="field">
          <span>Created</span>
          <select
            data-testid="range-filter"
            value={filter.range}
            onChange={(e) => update({ range: e.target.value as RunListFilter["range"], since: "", until: "" })}
          >
            {RANGES.map((r) => (
              <option key={r} value={r}>
                {r === "all" ? "All time" : `Last ${r}`}
              </option>
            ))}
            {filter.range === "custom" ? <option value="custom">{customRangeLabel(filter)}</option> : null}
          </select>
        </label>
        <SearchBox value={filter.q} onSearch={(q, replace) => update({ q }, replace)} />
      </div>
      <div className="chips" role="group" aria-label="Status">
        <StatusChip status="all" pressed={filter.statuses.length === 0} count={total} onClick={() => update({ statuses: [] })} />
        {RUN_STATUS_FILTERS.map((status) => (
          <StatusChip
            key={status}
            status={status}
            pressed={filter.statuses.includes(status)}
            count={counts === null ? null : (counts[status] ?? 0)}
            onClick={() => update({ statuses: toggleStatus(filter.statuses, status) })}
          />
        ))}
      </div>
    </div>
  );
}

function customRangeLabel(filter: RunListFilter): string {
  const show = (iso: string): string => {
    const ms = parseTime(iso);
    return ms === null ? iso : new Date(ms).toLocaleString();
  };
  return `${filter.since ? show(filter.since) : "…"} – ${filter.until ? show(filter.until) : "now"}`;
}

function StatusChip({
  status,
  pressed,
  count,
  onClick,
}: {
  status: string;
  pressed: boolean;
  count: number | null;
  onClick: () => void;
}) {
  return (
    <button type="button" className="chip" aria-pressed={pressed} data-testid={`status-filter-${status}`} onClick={onClick}>
      {status === "all" ? <span>all</span> : <StatusGlyph status={status} />}
      <span className="chip-count" data-testid="status-count">
        {count ?? "…"}
      </span>
    </button>
  );
}

/** Typing searches after a pause (replacing the history entry); Enter searches at once. */
function SearchBox({ value, onSearch }: { value: string; onSearch: (q: string, replace: boolean) => void }) {
  const [text, setText] = useState(value);
  const onSearchRef = useRef(onSearch);
  onSearchRef.current = onSearch;
  useEffect(() => setText(value), [value]);
  useEffect(() => {
    if (text.trim() === value) return;
    const timer = window.setTimeout(() => onSearchRef.current(text.trim(), true), 400);
    return () => window.clearTimeout(timer);
  }, [text, value]);
  const submit = (event: FormEvent): void => {
    event.preventDefault();
    if (text.trim() !== value) onSearch(text.trim(), false);
  };
  return (
    <form className="field search" role="search" onSubmit={submit}>
      <label htmlFor="run-search">Search</label>
      <input
        id="run-search"
        type="search"
        data-testid="search"
        placeholder="Run id or trigger event"
        value={text}
        onChange={(e) => setText(e.target.value)}
      />
    </form>
  );
}

function RunTable({ runs, now }: { runs: RunListItem[]; now: number }) {
  return (
    <table className="runs">
      <thead>
        <tr>
          <th scope="col">Status</th>
          <th scope="col">Run</th>
          <th scope="col">Flow</th>
          <th scope="col">Trigger</th>
          <th scope="col">Created</th>
          <th scope="col">Duration</th>
        </tr>
      </thead>
      <tbody>
        {runs.map((run) => (
          <tr key={run.run_id} data-testid="run-row" data-run-id={run.run_id} data-status={run.status}>
            <td className="cell-status">
              <StatusGlyph status={run.status} />
            </td>
            <td className="cell-id">
              <Link to={`/runs/${encodeURIComponent(run.run_id)}`} className="id-text mono" title={run.run_id}>
                {run.run_id}
              </Link>
            </td>
            <td className="cell-flow">
              {run.flow}
              {run.app ? <span className="muted small"> · {run.app}</span> : null}
            </td>
            <td className="cell-trigger">{run.trigger_event || <span className="muted">–</span>}</td>
            <td className="cell-time">
              <TimeText iso={run.created_at} now={now} />
            </td>
            <td className="cell-duration">{runDuration(run, now)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
