// The list view (seed 002's timeline of steps): one row per step in the order they ran, with
// glyph, name, duration, kind and attempts; a row opens to its input, output and error.

import { useState } from "react";
import type { StepView } from "../api";
import { ErrorBlock } from "../components/ErrorBlock";
import { JsonBlock } from "../components/JsonBlock";
import { StatusGlyph } from "../components/StatusGlyph";
import { formatAbsolute, formatDuration, parseTime } from "../logic/time";

export function StepList({ steps }: { steps: StepView[] }) {
  const [open, setOpen] = useState<ReadonlySet<string>>(new Set());
  if (steps.length === 0) return <p className="empty">This run has no steps yet.</p>;
  const toggle = (key: string): void =>
    setOpen((previous) => {
      const next = new Set(previous);
      if (!next.delete(key)) next.add(key);
      return next;
    });

  return (
    <ol className="step-list">
      {steps.map((step) => {
        const expanded = open.has(step.step_key);
        const detailId = `step-detail-${step.step_key}`;
        return (
          <li
            key={step.step_key}
            className={`step-row${step.status === "missing" ? " is-missing" : ""}`}
            data-testid="step-row"
            data-step-key={step.step_key}
            data-status={step.status}
          >
            <button type="button" className="step-summary" aria-expanded={expanded} aria-controls={detailId} onClick={() => toggle(step.step_key)}>
              <StatusGlyph status={step.status} kind={step.kind} />
              <span className="step-name">{step.name}</span>
              <span className="step-kind muted small">{step.kind}</span>
              <span className="step-attempts small">
                {step.attempts.length > 1 ? `${step.attempts.length} attempts` : step.attempt > 1 ? `attempt ${step.attempt}` : ""}
              </span>
              <span className="step-duration">{formatDuration(step.duration_ms)}</span>
            </button>
            {expanded ? <StepDetail step={step} id={detailId} /> : null}
          </li>
        );
      })}
    </ol>
  );
}

function StepDetail({ step, id }: { step: StepView; id: string }) {
  return (
    <div className="step-detail" id={id} data-testid="step-detail">
      <dl className="facts compact">
        <div className="fact">
          <dt>Key</dt>
          <dd className="mono">{step.step_key}</dd>
        </div>
        <div className="fact">
          <dt>Started</dt>
          <dd>{absolute(step.started_at)}</dd>
        </div>
        <div className="fact">
          <dt>Finished</dt>
          <dd>{absolute(step.finished_at)}</dd>
        </div>
        {step.deadline_at ? (
          <div className="fact">
            <dt>Deadline</dt>
            <dd>{absolute(step.deadline_at)}</dd>
          </div>
        ) : null}
      </dl>
      {step.error ? <ErrorBlock error={step.error} /> : null}
      <h3>Input</h3>
      <JsonBlock value={step.input} label={`Input of ${step.name}`} />
      <h3>Output</h3>
      <JsonBlock value={step.output} label={`Output of ${step.name}`} />
      {step.metadata !== null && step.metadata !== undefined ? (
        <>
          <h3>Metadata</h3>
          <JsonBlock value={step.metadata} label={`Metadata of ${step.name}`} />
        </>
      ) : null}
      {step.attempts.length > 1 ? (
        <>
          <h3>Attempts</h3>
          <ol className="attempts">
            {step.attempts.map((attempt) => (
              <li key={attempt.attempt}>
                <StatusGlyph status={attempt.status} /> attempt {attempt.attempt} · {formatDuration(attempt.duration_ms)}
                {attempt.error ? <span className="tone-bad"> · {attempt.error.message}</span> : null}
              </li>
            ))}
          </ol>
        </>
      ) : null}
    </div>
  );
}

function absolute(iso: string | null): string {
  const ms = parseTime(iso);
  return ms === null ? "–" : formatAbsolute(ms);
}
