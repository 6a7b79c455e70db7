// The alerts on the operations page: those firing now (each linking to the failed runs of its
// flow, or to the runs its rule is about), then the newest firings and resolutions.
// steplog/server/alert_evaluator.py decides them; this only shows GET /v1/alerts.

import { Link } from "react-router-dom";
import type { AlertPage, AlertView } from "../api";
import { TimeText } from "./TimeText";

/** Where an alert's runs are listed, by rule; null: no run list shows them (lag). */
export function alertRunsLink(alert: AlertView): string | null {
  switch (alert.rule) {
    case "failure_spike":
      return `/runs?${new URLSearchParams({ flow: alert.flow, status: "failed", since: alert.fired_at }).toString()}`;
    case "overdue_growth":
      return "/runs?status=overdue&range=all";
    case "stuck":
      return "/runs?status=stuck&range=all";
    case "dead_letters":
      return "/dead-letters";
    default:
      return null;
  }
}

export function AlertsPanel({ page, now }: { page: AlertPage; now: number }) {
  return (
    <section className="panel alerts" data-testid="alerts">
      <h2>Alerts</h2>
      {page.firing.length === 0 ? (
        <p className="muted" data-testid="alerts-none">No alert is firing.</p>
      ) : (
        <ul className="alert-list" role="alert">
          {page.firing.map((alert) => {
            const href = alertRunsLink(alert);
            return (
              <li key={alert.alert_id} className="alert is-firing" data-testid="alert-firing">
                <strong>{alert.rule.replace("_", " ")}</strong>{" "}
                {href === null ? alert.summary : <Link to={href}>{alert.summary}</Link>}{" "}
                <span className="muted small">
                  since <TimeText iso={alert.fired_at} now={now} />
                </span>
              </li>
            );
          })}
        </ul>
      )}
      {page.recent.length > 0 ? (
        <details>
          <summary className="small">Recent firings and resolutions ({page.recent.length})</summary>
          <ul className="alert-history small">
            {page.recent.map((alert) => (
              <li key={`${alert.alert_id} ${alert.state}`} data-state={alert.state}>
                <span className={alert.state === "firing" ? "bad" : "muted"}>{alert.state}</span>{" "}
                <TimeText iso={alert.at} now={now} /> {alert.summary}
              </li>
            ))}
          </ul>
        </details>
      ) : null}
    </section>
  );
}
