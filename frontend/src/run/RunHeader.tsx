// What a run is at a glance: status, flow, times, trigger, its relatives, its error; and the
// operator's two actions on a workflow run. The relatives get a row of their own, as wide as
// the header: a run id and a flow name do not fit a fact's column.

import { Link } from "react-router-dom";
import type { RunDetail, RunLink } from "../api";
import { ErrorBlock } from "../components/ErrorBlock";
import { CopyButton, IdText } from "../components/IdText";
import { JsonBlock } from "../components/JsonBlock";
import { StatusGlyph } from "../components/StatusGlyph";
import { TimeText } from "../components/TimeText";
import { useNow } from "../hooks/usePolling";
import { runDuration } from "../logic/time";
import { RunActions } from "./RunActions";

function RunLinkText({ link, testId }: { link: RunLink; testId?: string }) {
  return (
    <Link to={`/runs/${encodeURIComponent(link.run_id)}`} className="run-link" data-testid={testId}>
      <StatusGlyph status={link.status} showLabel={false} />
      <IdText id={link.run_id} />
      <span className="run-link-flow muted small">{link.flow}</span>
    </Link>
  );
}

export function RunHeader({ detail, ended, onActionDone }: { detail: RunDetail; ended: boolean; onActionDone: () => void }) {
  const now = useNow(1000);
  const { run } = detail;
  const relatives: { label: string; links: RunLink[]; testId?: string }[] = [
    { label: "Parent", links: detail.parent ? [detail.parent] : [] },
    { label: "Children", links: detail.children, testId: "child-link" },
    { label: "Retrigger of", links: detail.retrigger_of ? [detail.retrigger_of] : [] },
    { label: "Retriggered as", links: detail.retriggers },
  ].filter((r) => r.links.length > 0);

  return (
    <header className="run-header">
      <div className="run-title">
        <div className="run-name">
          <h1>
            <span className="muted">Run</span> <IdText id={run.run_id} />
          </h1>
          <CopyButton text={run.run_id} label="run id" />
        </div>
        <span className="run-status-badge">
          <StatusGlyph status={run.status} testId="run-status" />
        </span>
        {run.app ? <RunActions detail={detail} ended={ended} onDone={onActionDone} /> : null}
      </div>
      <dl className="facts">
        <Fact label="Flow">
          {run.flow} <span className="muted small">({run.project})</span>
        </Fact>
        {run.app ? <Fact label="App">{run.app}</Fact> : null}
        <Fact label="Created">
          <TimeText iso={run.created_at} now={now} />
        </Fact>
        {run.scheduled_for ? (
          <Fact label="Scheduled for">
            <TimeText iso={run.scheduled_for} now={now} />
          </Fact>
        ) : null}
        <Fact label="Started">
          <TimeText iso={run.started_at} now={now} />
        </Fact>
        <Fact label="Finished">
          <TimeText iso={run.finished_at} now={now} />
        </Fact>
        <Fact label="Duration">{runDuration(run, now)}</Fact>
        <Fact label="Steps">
          {run.step_count}
          {run.failed_step_count > 0 ? <span className="tone-bad"> ({run.failed_step_count} failed)</span> : null}
        </Fact>
        <Fact label="Trigger">
          {run.trigger_event || <span className="muted">none</span>}
          {run.trigger_event_id ? (
            <span className="id-line muted small">
              <IdText id={run.trigger_event_id} />
              <CopyButton text={run.trigger_event_id} label="trigger event id" />
            </span>
          ) : null}
        </Fact>
      </dl>
      {relatives.length > 0 ? (
        <dl className="relatives">
          {relatives.map((r) => (
            <div key={r.label} className="relative-row">
              <dt>{r.label}</dt>
              <dd>
                <ul className="link-list">
                  {r.links.map((link) => (
                    <li key={link.run_id}>
                      <RunLinkText link={link} testId={r.testId} />
                    </li>
                  ))}
                </ul>
              </dd>
            </div>
          ))}
        </dl>
      ) : null}
      {detail.error ? <ErrorBlock error={detail.error} /> : null}
      <div className="run-data">
        <details>
          <summary>Input</summary>
          <JsonBlock value={detail.input} label="Run input" />
        </details>
        <details>
          <summary>Output</summary>
          <JsonBlock value={detail.output} label="Run output" />
        </details>
        {detail.trigger_data !== null ? (
          <details>
            <summary>Trigger data</summary>
            <JsonBlock value={detail.trigger_data} label="Trigger data" />
          </details>
        ) : null}
      </div>
    </header>
  );
}

function Fact({ label, children }: { label: string; children: React.ReactNode }) {
  return (
    <div className="fact">
      <dt>{label}</dt>
      <dd>{children}</dd>
    </div>
  );
}
