// A JSON value a run carried (input, output, trigger data), as a collapsible tree for objects
// and arrays (react-json-view-lite) or as plain text for a scalar.

import { JsonView, collapseAllNested, defaultStyles } from "react-json-view-lite";
import "react-json-view-lite/dist/index.css";
import type { JsonValue } from "../api";

export function JsonBlock({ value, label }: { value: JsonValue; label: string }) {
  if (value === null || value === undefined) return <p className="muted small">none</p>;
  if (typeof value !== "object") {
    return <pre className="code" aria-label={label}>{typeof value === "string" ? value : JSON.stringify(value)}</pre>;
  }
  return (
    <div className="json" aria-label={label}>
      <JsonView data={value} shouldExpandNode={collapseAllNested} style={{ ...defaultStyles, container: "json-tree" }} />
    </div>
  );
}
