// The timeline view: one time axis from the run's start to its end (now, while it runs, so it
// grows live), each attempt of each step a bar on its row. Retries are separate bars, failed
// ones red with their error on hover and click; sleeps and waits are hatched gaps, not bars;
// parallel steps overlap. Positions are percentages of the track, so it fits any width.

import { useState } from "react";
import type { RunDetail } from "../api";
import { ErrorBlock } from "../components/ErrorBlock";
import { StatusGlyph } from "../components/StatusGlyph";
import { useNow } from "../hooks/usePolling";
import { statusLook } from "../logic/status";
import { elapsedTicks, type TimelineSegment, timelineRows, timelineWindow, timeToX } from "../logic/timeline";
import { formatAbsolute, formatClock, formatDuration } from "../logic/time";

const MAX_TICKS = 6;

function segmentTitle(name: string, segment: TimelineSegment): string {
  const what = segment.wait ? "wait" : `attempt ${segment.attempt}`;
  const error = segment.error ? ` — ${segment.error.type}: ${segment.error.message}` : "";
  const duration = formatDuration(segment.endMs - segment.startMs);
  return `${name}, ${what}: ${statusLook(segment.status).label}, ${duration}${segment.open ? " so far" : ""}${error}`;
}

export function TimelineView({ detail, ended }: { detail: RunDetail; ended: boolean }) {
  const ticking = useNow(1000);
  const now = ended ? Date.parse(detail.updated_at) || ticking : ticking;
  const [selected, setSelected] = useState<{ stepKey: string; attempt: number } | null>(null);
  const rows = timelineRows(detail.steps, now);
  const axis = timelineWindow(detail.run, rows, now, ended);
  const span = axis.endMs - axis.startMs;
  const x = timeToX(axis.startMs, axis.endMs, 100);
  const ticks = elapsedTicks(span, MAX_TICKS);

  if (rows.length === 0) return <p className="empty">This run has no steps yet.</p>;

  const chosen = selected === null ? undefined : rows.find((r) => r.step.step_key === selected.stepKey);
  const chosenSegment = chosen?.segments.find((s) => s.attempt === selected?.attempt);

  return (
    <div className="timeline">
      <div className="timeline-axis" aria-hidden="true">
        <div className="timeline-label timeline-start muted small" title={formatAbsolute(axis.startMs)}>
          from {formatClock(axis.startMs, true)}
        </div>
        <div className="timeline-track">
          {ticks.map((t) => (
            <span key={t} className="tick" style={{ left: `${x(axis.startMs + t)}%` }}>
              {t === 0 ? "0" : `+${formatDuration(t)}`}
            </span>
          ))}
        </div>
      </div>
      <ol className="timeline-rows">
        {rows.map(({ step, segments }) => (
          <li key={step.step_key} className="timeline-row">
            <div className="timeline-label">
              <StatusGlyph status={step.status} kind={step.kind} showLabel={false} />
              <span className="step-name" title={step.name}>
                {step.name}
              </span>
            </div>
            <div className="timeline-track">
              {ticks.map((t) => (
                <span key={t} className="gridline" style={{ left: `${x(axis.startMs + t)}%` }} />
              ))}
              {segments.length === 0 ? <span className="muted small track-note">{statusLook(step.status).label}</span> : null}
              {segments.map((segment) => {
                const left = x(segment.startMs);
                const look = statusLook(segment.status, step.kind);
                return (
                  <button
                    key={segment.attempt}
                    type="button"
                    className={`${segment.wait ? "wait-gap" : "attempt-bar"} tone-${look.tone}${segment.open ? " is-open" : ""}`}
                    style={{ left: `${left}%`, width: `${x(segment.endMs) - left}%` }}
                    title={segmentTitle(step.name, segment)}
                    aria-label={segmentTitle(step.name, segment)}
                    aria-pressed={selected?.stepKey === step.step_key && selected.attempt === segment.attempt}
                    data-testid={segment.wait ? "wait-gap" : "attempt-bar"}
                    data-step-key={step.step_key}
                    data-attempt={segment.attempt}
                    data-status={segment.status}
                    onClick={() => setSelected({ stepKey: step.step_key, attempt: segment.attempt })}
                  />
                );
              })}
            </div>
          </li>
        ))}
      </ol>
      {chosen !== undefined && chosenSegment !== undefined ? (
        <div className="segment-detail" role="region" aria-label="Selected attempt">
          <p>
            <StatusGlyph status={chosenSegment.status} kind={chosen.step.kind} /> <strong>{chosen.step.name}</strong>, attempt{" "}
            {chosenSegment.attempt}: {formatAbsolute(chosenSegment.startMs)}, {formatDuration(chosenSegment.endMs - chosenSegment.startMs)}
            {chosenSegment.open ? " so far" : ""}
          </p>
          {chosenSegment.error ? <ErrorBlock error={chosenSegment.error} /> : null}
        </div>
      ) : null}
    </div>
  );
}
