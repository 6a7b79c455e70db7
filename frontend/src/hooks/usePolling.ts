// Runs a page's load now, then again every `intervalMs` (null: once) while the tab is visible.
// A failed load is reported to the error banner and retried every few seconds, whatever the
// interval, until one succeeds; that success clears the banner.

import { useEffect, useId, useRef, useState } from "react";
import { describeError, isAbort } from "../api";
import { apiHealth } from "./apiHealth";

export const RETRY_MS = 3000;

export function usePolling(
  load: (signal: AbortSignal) => Promise<void>,
  intervalMs: number | null,
  deps: readonly unknown[],
): void {
  const source = useId();
  const loadRef = useRef(load);
  loadRef.current = load;

  useEffect(() => {
    let stopped = false;
    let timer: number | undefined;
    let inFlight = false;
    // Set when a load fell due while the tab was hidden: it runs as soon as the tab shows.
    let dueWhileHidden = false;
    const controller = new AbortController();

    const run = async (): Promise<void> => {
      timer = undefined;
      if (document.hidden) {
        dueWhileHidden = true;
        return;
      }
      inFlight = true;
      let next = intervalMs;
      try {
        await loadRef.current(controller.signal);
        apiHealth.succeeded(source);
      } catch (error) {
        if (stopped || isAbort(error)) return;
        apiHealth.failed(source, describeError(error));
        next = RETRY_MS;
      } finally {
        inFlight = false;
      }
      if (!stopped && next !== null) timer = window.setTimeout(() => void run(), next);
    };

    const onVisibility = (): void => {
      if (!document.hidden && dueWhileHidden && !inFlight && timer === undefined) {
        dueWhileHidden = false;
        void run();
      }
    };

    document.addEventListener("visibilitychange", onVisibility);
    void run();
    return () => {
      stopped = true;
      controller.abort();
      if (timer !== undefined) window.clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisibility);
      apiHealth.succeeded(source);
    };
    // The caller names what restarts the loop; `load` is read through a ref so that a new
    // closure at each render does not.
  }, [source, intervalMs, ...deps]);
}

/** The current time, refreshed every `everyMs`, for relative times and live durations. */
export function useNow(everyMs: number): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = window.setInterval(() => setNow(Date.now()), everyMs);
    return () => window.clearInterval(timer);
  }, [everyMs]);
  return now;
}
