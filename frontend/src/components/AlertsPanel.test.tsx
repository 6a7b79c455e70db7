import { renderToStaticMarkup } from "react-dom/server";
import { MemoryRouter } from "react-router-dom";
import { describe, expect, it } from "vitest";
import type { AlertPage, AlertView } from "../api";
import { AlertsPanel, alertRunsLink } from "./AlertsPanel";

const spike: AlertView = {
  alert_id: "failure_spike:acme/billing@2026-12-06T12:00:00+00:00",
  state: "firing",
  rule: "failure_spike",
  project: "acme",
  flow: "billing",
  summary: "6 runs of acme/billing failed in the last 15 min",
  value: 6,
  threshold: 5,
  fired_at: "2026-12-06T12:00:00Z",
  at: "2026-12-06T12:00:00Z",
};
const NOW = Date.parse("2026-12-06T12:05:00Z");

function render(page: AlertPage): string {
  return renderToStaticMarkup(
    <MemoryRouter>
      <AlertsPanel page={page} now={NOW} />
    </MemoryRouter>,
  );
}

describe("AlertsPanel", () => {
  it("says so when nothing fires", () => {
    expect(render({ firing: [], recent: [] })).toContain("No alert is firing.");
  });

  it("lists a firing alert with a link to its flow's failed runs, and the history", () => {
    const resolved: AlertView = { ...spike, alert_id: "stuck@x", rule: "stuck", state: "resolved", summary: "resolved: 3 runs stuck" };
    const html = render({ firing: [spike], recent: [spike, resolved] });
    expect(html).toContain('data-testid="alert-firing"');
    expect(html).toContain("6 runs of acme/billing failed");
    expect(html).toContain(`href="/runs?flow=billing&amp;status=failed&amp;since=${encodeURIComponent(spike.fired_at)}"`);
    expect(html).toContain("5 min ago");
    expect(html).toContain('data-state="resolved"');
    expect(html).not.toContain("No alert is firing.");
  });

  it("links each rule to the runs it is about, lag to nothing", () => {
    expect(alertRunsLink({ ...spike, rule: "stuck" })).toBe("/runs?status=stuck&range=all");
    expect(alertRunsLink({ ...spike, rule: "dead_letters" })).toBe("/dead-letters");
    expect(alertRunsLink({ ...spike, rule: "lag" })).toBeNull();
  });
});
