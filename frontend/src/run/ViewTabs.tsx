// The run page's view switch: a tab list, Left/Right/Home/End moving between the tabs.

import { type KeyboardEvent, useRef } from "react";

export const RUN_VIEWS = ["list", "graph", "timeline"] as const;
export type RunView = (typeof RUN_VIEWS)[number];

const LABELS: Record<RunView, string> = { list: "List", graph: "Graph", timeline: "Timeline" };

export function ViewTabs({ view, onChange }: { view: RunView; onChange: (view: RunView) => void }) {
  const tabs = useRef<Record<string, HTMLButtonElement | null>>({});

  const onKeyDown = (event: KeyboardEvent): void => {
    const index = RUN_VIEWS.indexOf(view);
    const moves: Record<string, number> = {
      ArrowRight: (index + 1) % RUN_VIEWS.length,
      ArrowLeft: (index + RUN_VIEWS.length - 1) % RUN_VIEWS.length,
      Home: 0,
      End: RUN_VIEWS.length - 1,
    };
    const target = moves[event.key];
    if (target === undefined) return;
    event.preventDefault();
    const next = RUN_VIEWS[target]!;
    onChange(next);
    tabs.current[next]?.focus();
  };

  return (
    <div className="tabs" role="tablist" aria-label="Views of the steps" onKeyDown={onKeyDown}>
      {RUN_VIEWS.map((name) => (
        <button
          key={name}
          ref={(el) => {
            tabs.current[name] = el;
          }}
          type="button"
          role="tab"
          id={`tab-${name}`}
          aria-selected={view === name}
          aria-controls={`panel-${name}`}
          tabIndex={view === name ? 0 : -1}
          className="tab"
          data-testid={`view-${name}`}
          onClick={() => onChange(name)}
        >
          {LABELS[name]}
        </button>
      ))}
    </div>
  );
}
