// Operations (`/ops`): seed 003's escalation signals. Failed runs per flow in 5-minute buckets
// with the spike flag, the overdue count and its trend, stuck runs, processor lag, dead letters;
// above them the alerts firing (GET /v1/alerts).
// Every chart leads to the runs behind it.

import { useMemo, useRef, useState } from "react";
import { Link, type NavigateFunction, useNavigate } from "react-router-dom";
import uPlot from "uplot";
import { type AlertPage, api, type OpsSummary } from "../api";
import { UPlotChart } from "../charts/UPlotChart";
import { AlertsPanel } from "../components/AlertsPanel";
import { StatusGlyph } from "../components/StatusGlyph";
import { TimeText } from "../components/TimeText";
import { useMe } from "../hooks/useMe";
import { useNow, usePolling } from "../hooks/usePolling";
import { bucketRunsLink } from "../logic/filters";
import { bucketSummary, failureSeries, flowAt, snapToBar, stackCounts } from "../logic/ops";
import { formatClock, formatDuration } from "../logic/time";

const REFRESH_MS = 10_000;
/** The narrowest a failures bar is drawn, in CSS pixels, however many buckets share the width. */
const MIN_BAR_PX = 7;
/** Steps of a count axis: whole runs, never 0.5 of one. */
const COUNT_INCREMENTS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000];
const PALETTE = ["#4f6bed", "#e0823d", "#2a9d8f", "#c2417a", "#8a6fd1", "#6b8e23", "#d4a72c", "#5b7083"];

export function OpsPage() {
  const [ops, setOps] = useState<OpsSummary | null>(null);
  const me = useMe();
  const now = useNow(10_000);
  usePolling(async (signal) => setOps(await api.ops(signal)), REFRESH_MS, []);
  const [alerts, setAlerts] = useState<AlertPage | null>(null);
  usePolling(async (signal) => setAlerts(await api.alerts(signal)), REFRESH_MS, []);

  if (ops === null) return <p className="muted">Loading the operations summary…</p>;

  const lagTotal = ops.lag.total;
  return (
    <section className="ops">
      <h1>Operations</h1>
      {alerts !== null ? <AlertsPanel page={alerts} now={now} /> : null}
      <div
        className={`spike ${ops.spike.flagged ? "is-flagged" : ""}`}
        data-testid="spike-flag"
        data-flagged={ops.spike.flagged ? "true" : "false"}
        role={ops.spike.flagged ? "alert" : undefined}
      >
        <StatusGlyph status={ops.spike.flagged ? "failed" : "completed"} showLabel={false} />
        <div>
          <strong>{ops.spike.flagged ? "Failure spike: escalate" : "No failure spike"}</strong>
          <p>{ops.spike.detail}</p>
          {ops.spike.flagged && ops.spike.flows.length > 0 ? (
            <p className="small">
              Flows:{" "}
              {ops.spike.flows.map((flow, i) => (
                <span key={flow}>
                  {i > 0 ? ", " : ""}
                  <Link to={`/runs?${new URLSearchParams({ flow, status: "failed", range: "1h" }).toString()}`}>{flow}</Link>
                </span>
              ))}
            </p>
          ) : null}
        </div>
      </div>

      <div className="cards">
        <Card title="Overdue" href="/runs?status=overdue&range=all">
          <span className="big" data-testid="overdue-count">{ops.overdue_count}</span>
          {ops.overdue_oldest_ms !== null ? <span className="muted small">oldest {formatDuration(ops.overdue_oldest_ms)} late</span> : null}
        </Card>
        <Card title="Stuck" href="/runs?status=stuck&range=all">
          <span className="big" data-testid="stuck-count">{ops.stuck_count}</span>
        </Card>
        {/* Dead letters carry no project: counted for keys of every project only. */}
        {(me === null || me.projects === null) && (
          <Card title="Dead letters" href="/dead-letters">
            <span className="big" data-testid="dead-letter-count">{ops.dead_letters_24h}</span>
            <span className="muted small">in 24 h · {ops.dead_letters_total} in all</span>
          </Card>
        )}
        <Card title="Processor lag">
          <span className="big" data-testid="lag-total">{lagTotal === null ? "unknown" : lagTotal}</span>
          <span className="muted small">{ops.lag.error ?? "events not folded yet"}</span>
        </Card>
      </div>

      <FailuresPanel ops={ops} />
      <OverduePanel ops={ops} />

      <section className="panel">
        <h2>Stuck runs</h2>
        {ops.stuck_runs.length === 0 ? (
          <p className="muted">No run is stuck.</p>
        ) : (
          <ul className="stuck-list">
            {ops.stuck_runs.map((run) => (
              <li key={run.run_id}>
                <StatusGlyph status={run.status} showLabel={false} />
                <Link to={`/runs/${encodeURIComponent(run.run_id)}`} className="mono">
                  {run.run_id}
                </Link>
                <span>{run.flow}</span>
                <span className="muted small">
                  started <TimeText iso={run.started_at} now={now} />
                </span>
              </li>
            ))}
          </ul>
        )}
      </section>

      {Object.keys(ops.lag.partitions).length > 0 ? (
        <section className="panel">
          <h2>Lag by partition</h2>
          <table className="compact-table">
            <tbody>
              {Object.entries(ops.lag.partitions).map(([partition, lag]) => (
                <tr key={partition}>
                  <th scope="row" className="mono">
                    {partition}
                  </th>
                  <td>{lag}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </section>
      ) : null}
    </section>
  );
}

function Card({ title, href, children }: { title: string; href?: string; children: React.ReactNode }) {
  return (
    <div className="card">
      <h2>{href ? <Link to={href}>{title}</Link> : title}</h2>
      <div className="card-body">{children}</div>
    </div>
  );
}

/** Failed runs per flow and bucket, stacked bars; a click opens that bucket's failed runs. */
function FailuresPanel({ ops }: { ops: OpsSummary }) {
  const navigate = useNavigate();
  const navigateRef = useRef<NavigateFunction>(navigate);
  navigateRef.current = navigate;
  const [hovered, setHovered] = useState<number | null>(null);
  const series = useMemo(
    () => failureSeries(ops.failures, ops.window_start, ops.window_end, ops.bucket_minutes),
    [ops.failures, ops.window_start, ops.window_end, ops.bucket_minutes],
  );
  const stacked = useMemo(() => stackCounts(series.counts), [series]);
  // The chart reads the latest series through a ref, so a refresh does not rebuild it.
  const latest = useRef({ series, stacked, bucketMinutes: ops.bucket_minutes });
  latest.current = { series, stacked, bucketMinutes: ops.bucket_minutes };
  const flowsKey = series.flows.join("\n");

  const options = useMemo((): Omit<uPlot.Options, "width"> => {
    const flows = flowsKey === "" ? [] : flowsKey.split("\n");
    // 288 buckets across a laptop's width are 3-4 px each: a burst in one of them would be a
    // hairline, so a bar is never narrower than MIN_BAR_PX (it may cover its neighbours).
    const bars = uPlot.paths.bars!({ size: [0.9, 40, MIN_BAR_PX], gap: 0 });
    // Drawn top band first, so each lower band is painted over the running sum above it.
    const drawn = flows.map((flow, i) => ({ flow, i })).reverse();
    // The bucket under the pointer, moved onto a bar drawn wider than its bucket.
    const pointed = (u: uPlot): number | null => {
      const index = u.cursor.idx;
      if (index === null || index === undefined || (u.cursor.left ?? -1) < 0) return null;
      const { stacked: st, series: s } = latest.current;
      const bucketPx = u.over.clientWidth / Math.max(1, s.buckets.length);
      return snapToBar(st[st.length - 1] ?? [], index, Math.floor(MIN_BAR_PX / 2 / bucketPx + 0.5));
    };
    return {
      height: 220,
      // The flows' own legend, with counts and links, is below the chart; the hover readout too.
      legend: { show: false },
      cursor: { drag: { x: false, y: false }, points: { show: false } },
      scales: {
        // The whole of the first and last buckets, so neither edge's bar is cut in half.
        x: {
          time: true,
          range: () => {
            const { series: s, bucketMinutes } = latest.current;
            const first = s.buckets[0] ?? 0;
            const last = s.buckets[s.buckets.length - 1] ?? first;
            return [first / 1000, (last + bucketMinutes * 60_000) / 1000];
          },
        },
        y: { range: (_u, _min, max) => [0, Math.max(1, max)] },
      },
      axes: [{}, { label: "failed runs", size: 50, incrs: COUNT_INCREMENTS }],
      series: [
        {},
        ...drawn.map(({ flow, i }) => ({
          label: flow,
          fill: PALETTE[i % PALETTE.length],
          width: 0,
          paths: bars,
          points: { show: false },
        })),
      ],
      hooks: {
        setCursor: [(u: uPlot) => setHovered(pointed(u))],
        ready: [
          (u: uPlot) => {
            u.over.addEventListener("click", () => {
              const index = pointed(u);
              if (index === null || u.cursor.top === undefined) return;
              const { series: s, stacked: st, bucketMinutes } = latest.current;
              const bucket = s.buckets[index];
              if (bucket === undefined) return;
              const flow = flowAt(s.flows, st, index, u.posToVal(u.cursor.top, "y"));
              navigateRef.current(bucketRunsLink(flow, new Date(bucket).toISOString(), bucketMinutes));
            });
          },
        ],
      },
    };
  }, [flowsKey]);

  // Each bar stands at its bucket's middle: the bucket is the time it covers.
  const data = useMemo(
    (): uPlot.AlignedData => [
      series.buckets.map((t) => (t + (ops.bucket_minutes * 60_000) / 2) / 1000),
      ...series.flows.map((_f, i) => stacked[i]!).reverse(),
    ],
    [series, stacked, ops.bucket_minutes],
  );
  const totals = series.flows.map((flow, i) => ({ flow, failed: series.counts[i]!.reduce((a, b) => a + b, 0) }));
  const since = new Date(series.buckets[0] ?? Date.parse(ops.window_start)).toISOString();
  const bucketMs = ops.bucket_minutes * 60_000;
  const hoveredBucket = hovered === null ? undefined : series.buckets[hovered];

  return (
    <section className="panel" data-testid="failures-chart">
      <h2>Failed runs per flow, last 24 h</h2>
      <p className="muted small">{ops.bucket_minutes}-minute buckets. Click a bar for its failed runs.</p>
      {series.flows.length === 0 ? <p className="muted">No run failed in the window.</p> : null}
      <UPlotChart options={options} data={data} label="Failed runs per flow in 5-minute buckets" />
      <p className="chart-readout small">
        {hovered !== null && hoveredBucket !== undefined
          ? `${formatClock(hoveredBucket)}–${formatClock(hoveredBucket + bucketMs)}: ${bucketSummary(series, hovered)}`
          : null}
      </p>
      {totals.length > 0 ? (
        <ul className="flow-totals">
          {totals.map(({ flow, failed }, i) => (
            <li key={flow}>
              <span className="swatch" style={{ background: PALETTE[i % PALETTE.length] }} aria-hidden="true" />
              <Link to={`/runs?${new URLSearchParams({ flow, status: "failed", since }).toString()}`}>{flow}</Link>
              <span className="muted small"> {failed} failed</span>
            </li>
          ))}
        </ul>
      ) : null}
    </section>
  );
}

/** Overdue runs at each bucket's end; a click opens the overdue runs. */
function OverduePanel({ ops }: { ops: OpsSummary }) {
  const navigate = useNavigate();
  const navigateRef = useRef<NavigateFunction>(navigate);
  navigateRef.current = navigate;
  const [hovered, setHovered] = useState<number | null>(null);
  const options = useMemo(
    (): Omit<uPlot.Options, "width"> => ({
      height: 160,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(1, max)] } },
      axes: [{}, { label: "overdue", size: 50, incrs: COUNT_INCREMENTS }],
      series: [{}, { label: "overdue", stroke: "#d4a72c", fill: "rgba(212, 167, 44, 0.15)", width: 2, points: { show: false } }],
      hooks: {
        setCursor: [(u: uPlot) => setHovered((u.cursor.left ?? -1) < 0 ? null : (u.cursor.idx ?? null))],
        ready: [(u: uPlot) => u.over.addEventListener("click", () => navigateRef.current("/runs?status=overdue&range=all"))],
      },
    }),
    [],
  );
  const data = useMemo(
    (): uPlot.AlignedData => [ops.overdue_trend.map((p) => Date.parse(p.at) / 1000), ops.overdue_trend.map((p) => p.count)],
    [ops.overdue_trend],
  );
  const point = hovered === null ? undefined : ops.overdue_trend[hovered];
  return (
    <section className="panel" data-testid="overdue-chart">
      <h2>
        <Link to="/runs?status=overdue&range=all">Overdue runs</Link>, last 24 h
      </h2>
      <p className="muted small">A growing count means the engine is falling behind its queue: escalate.</p>
      <UPlotChart options={options} data={data} label="Overdue runs over the last 24 hours" />
      <p className="chart-readout small">{point !== undefined ? `${formatClock(Date.parse(point.at))}: ${point.count} overdue` : null}</p>
    </section>
  );
}
