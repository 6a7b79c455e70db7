// A status as a glyph (a small SVG icon) and, unless told otherwise, its word beside it.

import type { ReactElement } from "react";
import { type Glyph, statusLook } from "../logic/status";

const PATHS: Record<Exclude<Glyph, "spinner">, ReactElement> = {
  check: <path d="M4.5 8.5l2.5 2.5 5-5.5" />,
  cross: <path d="M5 5l6 6M11 5l-6 6" />,
  clock: (
    <>
      <circle cx="8" cy="8" r="5.5" />
      <path d="M8 5v3.2l2.2 1.4" />
    </>
  ),
  skip: <path d="M4 11c0-3 2-5 5-5h3M10 3.5L12.5 6 10 8.5" />,
  missing: (
    <>
      <circle cx="8" cy="8" r="5.5" strokeDasharray="2 2" />
      <path d="M6.5 6.6a1.6 1.6 0 1 1 2.2 1.5c-.5.2-.7.6-.7 1.1M8 11.2v.1" />
    </>
  ),
  stuck: <path d="M8 2.5l6 10.5H2zM8 6.5v3.2M8 11.3v.1" />,
  pause: <path d="M6 4.5v7M10 4.5v7" />,
  ban: (
    <>
      <circle cx="8" cy="8" r="5.5" />
      <path d="M4.2 11.8l7.6-7.6" />
    </>
  ),
  dot: <circle cx="8" cy="8" r="2.5" />,
};

/** `size` in pixels, for a glyph inside an SVG drawing (CSS sizes it elsewhere). */
export function GlyphIcon({ glyph, size }: { glyph: Glyph; size?: number }) {
  if (glyph === "spinner") {
    return (
      <svg className="glyph glyph-spinner" viewBox="0 0 16 16" width={size} height={size} aria-hidden="true">
        <circle cx="8" cy="8" r="5.5" opacity="0.25" />
        <path d="M8 2.5a5.5 5.5 0 0 1 5.5 5.5" />
      </svg>
    );
  }
  return (
    <svg className="glyph" viewBox="0 0 16 16" width={size} height={size} aria-hidden="true">
      {PATHS[glyph]}
    </svg>
  );
}

export function StatusGlyph({
  status,
  kind = "",
  showLabel = true,
  testId,
}: {
  status: string;
  kind?: string;
  showLabel?: boolean;
  testId?: string;
}) {
  const look = statusLook(status, kind);
  return (
    <span className={`status tone-${look.tone}`} title={showLabel ? undefined : look.label}>
      <GlyphIcon glyph={look.glyph} />
      {showLabel ? (
        <span className="status-label" data-testid={testId}>
          {look.label}
        </span>
      ) : (
        <span className="visually-hidden">{look.label}</span>
      )}
    </span>
  );
}
