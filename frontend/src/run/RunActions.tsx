// Cancel (a workflow run that has not ended) and retrigger (one that has), each behind a
// confirmation; the service's answer, or its error, stays in view.

import { useState } from "react";
import { Link } from "react-router-dom";
import { type ActionName, type ActionResult, api, describeError, type RunDetail } from "../api";
import { ConfirmDialog } from "../components/ConfirmDialog";
import { IdText } from "../components/IdText";

type Outcome = { ok: true; result: ActionResult } | { ok: false; error: string };

export function RunActions({ detail, ended, onDone }: { detail: RunDetail; ended: boolean; onDone: () => void }) {
  const [asking, setAsking] = useState<ActionName | null>(null);
  const [reason, setReason] = useState("");
  const [busy, setBusy] = useState(false);
  const [outcome, setOutcome] = useState<Outcome | null>(null);
  const action: ActionName = ended ? "retrigger" : "cancel";
  const runId = detail.run.run_id;

  const confirm = async (): Promise<void> => {
    setBusy(true);
    try {
      const result = await api.action(runId, action, action === "cancel" ? reason.trim() : undefined);
      setOutcome({ ok: true, result });
      onDone();
    } catch (error) {
      setOutcome({ ok: false, error: describeError(error) });
    } finally {
      setBusy(false);
      setAsking(null);
    }
  };

  return (
    <div className="run-actions">
      {action === "cancel" ? (
        <button type="button" className="button danger" data-testid="action-cancel" onClick={() => setAsking("cancel")}>
          Cancel run
        </button>
      ) : (
        <button type="button" className="button" data-testid="action-retrigger" onClick={() => setAsking("retrigger")}>
          Retrigger
        </button>
      )}
      {outcome !== null ? (
        <p className={`action-result ${outcome.ok ? "tone-ok" : "tone-bad"}`} role="status" data-testid="action-result">
          {outcome.ok ? outcome.result.message : outcome.error}
          {outcome.ok && outcome.result.run_id ? (
            <>
              {" "}
              <Link to={`/runs/${encodeURIComponent(outcome.result.run_id)}`}>Open the new run</Link>
            </>
          ) : null}
        </p>
      ) : null}
      {asking === "cancel" ? (
        <ConfirmDialog title="Cancel this run?" confirmLabel="Cancel run" destructive busy={busy} onConfirm={() => void confirm()} onClose={() => setAsking(null)}>
          <p className="id-line">
            <IdText id={runId} />
          </p>
          <p>Its running steps are stopped and it ends as cancelled. This cannot be undone.</p>
          <label className="field">
            <span>Reason (optional)</span>
            <input type="text" value={reason} onChange={(e) => setReason(e.target.value)} />
          </label>
        </ConfirmDialog>
      ) : null}
      {asking === "retrigger" ? (
        <ConfirmDialog title="Retrigger this run?" confirmLabel="Retrigger" destructive={false} busy={busy} onConfirm={() => void confirm()} onClose={() => setAsking(null)}>
          <p className="id-line">
            <IdText id={runId} />
          </p>
          <p>
            A new run of <strong>{detail.run.flow}</strong> starts from the beginning with the same input. This run is left as it
            is.
          </p>
        </ConfirmDialog>
      ) : null}
    </div>
  );
}
