// One run (`/runs/{run_id}?view=list|graph|timeline`): its header and actions, and three views
// of its steps switched without a reload. A run that has not ended is re-read every 2 s, so the
// views grow live.

import { useState } from "react";
import { useParams, useSearchParams } from "react-router-dom";
import { api, ApiError, ENDED_RUN_STATUSES, type RunDetail } from "../api";
import { usePolling } from "../hooks/usePolling";
import { GraphView } from "../run/GraphView";
import { RunHeader } from "../run/RunHeader";
import { StepList } from "../run/StepList";
import { TimelineView } from "../run/TimelineView";
import { ViewTabs, type RunView, RUN_VIEWS } from "../run/ViewTabs";
import { NotFound } from "./NotFound";

const LIVE_MS = 2000;

function isEnded(detail: RunDetail): boolean {
  return ENDED_RUN_STATUSES.has(detail.run.recorded_status) || ENDED_RUN_STATUSES.has(detail.run.status);
}

export function RunPage() {
  const { runId = "" } = useParams();
  const [searchParams, setSearchParams] = useSearchParams();
  const requested = searchParams.get("view") ?? "list";
  const view: RunView = (RUN_VIEWS as readonly string[]).includes(requested) ? (requested as RunView) : "list";
  const [detail, setDetail] = useState<RunDetail | null>(null);
  const [missing, setMissing] = useState(false);
  // Bumped after an action, to read the run again at once.
  const [reloads, setReloads] = useState(0);

  const shown = detail !== null && detail.run.run_id === runId ? detail : null;
  const live = shown === null || !isEnded(shown);

  usePolling(
    async (signal) => {
      try {
        setDetail(await api.run(runId, signal));
        setMissing(false);
      } catch (error) {
        if (error instanceof ApiError && error.status === 404) {
          setMissing(true);
          return;
        }
        throw error;
      }
    },
    live ? LIVE_MS : null,
    [runId, reloads],
  );

  if (missing && shown === null) return <NotFound what={`Run ${runId}`} />;
  if (shown === null) return <p className="muted">Loading run {runId}…</p>;

  return (
    <section className="run-page">
      <RunHeader detail={shown} ended={!live} onActionDone={() => setReloads((n) => n + 1)} />
      <ViewTabs
        view={view}
        onChange={(next) => {
          const params = new URLSearchParams(searchParams);
          params.set("view", next);
          setSearchParams(params);
        }}
      />
      <div role="tabpanel" id={`panel-${view}`} aria-labelledby={`tab-${view}`} className="view-panel">
        {view === "list" ? <StepList steps={shown.steps} /> : null}
        {view === "graph" ? <GraphView detail={shown} /> : null}
        {view === "timeline" ? <TimelineView detail={shown} ended={!live} /> : null}
      </div>
    </section>
  );
}
