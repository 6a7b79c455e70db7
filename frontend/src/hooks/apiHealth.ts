// Which of the page's live requests last failed, and why: the error banner shows them until
// each one's next attempt succeeds, so it clears by itself once the service is back.

import { useSyncExternalStore } from "react";

const failures = new Map<string, string>();
const listeners = new Set<() => void>();
let snapshot: string[] = [];

function publish(): void {
  snapshot = [...new Set(failures.values())];
  for (const listener of listeners) listener();
}

export const apiHealth = {
  failed(source: string, message: string): void {
    if (failures.get(source) === message) return;
    failures.set(source, message);
    publish();
  },
  succeeded(source: string): void {
    if (failures.delete(source)) publish();
  },
};

function subscribe(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** The distinct error texts of the requests failing now (empty when all is well). */
export function useApiProblems(): string[] {
  return useSyncExternalStore(subscribe, () => snapshot);
}
