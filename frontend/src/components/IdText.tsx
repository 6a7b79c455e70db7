// A long id (a run's, an event's) as it reads everywhere: monospace on one line, cut with an
// ellipsis where it does not fit (never broken mid-id), the whole id in its title; and a
// button that copies one, where the reader may want to paste it somewhere.

import { useState } from "react";

export function IdText({ id }: { id: string }) {
  return (
    <span className="id-text mono" title={id}>
      {id}
    </span>
  );
}

export function CopyButton({ text, label }: { text: string; label: string }) {
  const [copied, setCopied] = useState(false);
  const copy = async (): Promise<void> => {
    await writeClipboard(text);
    setCopied(true);
    window.setTimeout(() => setCopied(false), 1500);
  };
  return (
    <button type="button" className="copy-button" aria-label={`Copy ${label}`} title={`Copy ${label}`} onClick={() => void copy()}>
      {copied ? "copied" : "copy"}
    </button>
  );
}

/** The Clipboard API needs a secure context (https or localhost); a dashboard served over
 * plain http from another host falls back to the older copy command on a hidden textarea. */
async function writeClipboard(text: string): Promise<void> {
  if (window.isSecureContext && navigator.clipboard) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const focused = document.activeElement as HTMLElement | null;
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.appendChild(area);
  area.select();
  document.execCommand("copy");
  area.remove();
  focused?.focus();
}
