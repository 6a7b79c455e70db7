// Which child run an invoke step (run_workflow) started: the step's child_run_id (from its
// step.invoked event), looked up among the run's children.

import type { RunLink, StepView } from "../api";

export function childRunsByStep(steps: readonly StepView[], children: readonly RunLink[]): Map<string, RunLink> {
  const byId = new Map(children.map((child) => [child.run_id, child]));
  const matched = new Map<string, RunLink>();
  for (const step of steps) {
    const child = step.child_run_id === null ? undefined : byId.get(step.child_run_id);
    if (child !== undefined) matched.set(step.step_key, child);
  }
  return matched;
}
