import { describe, expect, it } from "vitest";
import type { RunLink, StepView } from "../api";
import { childRunsByStep } from "./children";

const link = (run_id: string): RunLink => ({ run_id, project: "p", flow: "child", status: "completed" });
const step = (step_key: string, kind: string, child_run_id: string | null = null): StepView => ({
  step_key, name: step_key, kind, status: "completed", attempt: 1, started_at: null, finished_at: null,
  duration_ms: null, deadline_at: null, input: null, output: null, error: null, metadata: null,
  child_run_id, attempts: [],
});

describe("childRunsByStep", () => {
  it("links each step to the child run it started", () => {
    const map = childRunsByStep([step("a", "run_workflow", "c2"), step("b", "run_workflow", "c1")], [link("c1"), link("c2")]);
    expect(map.get("a")?.run_id).toBe("c2");
    expect(map.get("b")?.run_id).toBe("c1");
  });

  it("links nothing to a step that started no child, or whose child is not listed", () => {
    const map = childRunsByStep([step("x", "run"), step("a", "run_workflow", "gone")], [link("c1")]);
    expect(map.size).toBe(0);
  });
});
