import { describe, expect, it } from "vitest";
import { bucketRunsLink, filterToApi, filterToSearch, parseFilter, toggleStatus } from "./filters";

describe("the run list's query string", () => {
  it("round-trips every filter, leaving defaults out", () => {
    const search = new URLSearchParams("flow=checkout&status=failed,stuck&range=7d&q=ord_1");
    const filter = parseFilter(search);
    expect(filter).toMatchObject({ flow: "checkout", statuses: ["failed", "stuck"], range: "7d", q: "ord_1" });
    expect(filterToSearch(filter)).toBe("flow=checkout&status=failed,stuck&range=7d&q=ord_1");
    expect(filterToSearch(parseFilter(new URLSearchParams()))).toBe("");
  });

  it("reads since/until (the ops page's links) as a custom range", () => {
    const filter = parseFilter(new URLSearchParams("status=failed&since=2025-01-01T00:00:00.000Z&until=2025-01-01T00:05:00.000Z"));
    expect(filter.range).toBe("custom");
    expect(filterToApi(filter, 0).get("until")).toBe("2025-01-01T00:05:00.000Z");
  });

  it("turns a preset range into since, counted back from now", () => {
    const now = Date.parse("2025-01-02T00:00:00Z");
    expect(filterToApi(parseFilter(new URLSearchParams()), now).get("since")).toBe("2025-01-01T00:00:00.000Z");
    expect(filterToApi(parseFilter(new URLSearchParams("range=all")), now).has("since")).toBe(false);
  });

  it("toggles statuses, all clearing them", () => {
    expect(toggleStatus(["failed"], "stuck")).toEqual(["failed", "stuck"]);
    expect(toggleStatus(["failed", "stuck"], "failed")).toEqual(["stuck"]);
    expect(toggleStatus(["failed"], "all")).toEqual([]);
  });
});

describe("bucketRunsLink", () => {
  it("opens the failed runs of one flow in one bucket", () => {
    expect(bucketRunsLink("checkout", "2025-01-01T10:05:00Z", 5)).toBe(
      "/runs?flow=checkout&status=failed&since=2025-01-01T10%3A05%3A00.000Z&until=2025-01-01T10%3A10%3A00.000Z",
    );
  });
});
