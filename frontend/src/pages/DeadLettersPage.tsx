// Dead letters (`/dead-letters`): what the processors could not read, newest first, with where
// it came from and a glance at its bytes.

import { useState } from "react";
import { api, type DeadLetterPage, type DeadLetterView, describeError } from "../api";
import { TimeText } from "../components/TimeText";
import { useNow, usePolling } from "../hooks/usePolling";

const PAGE_SIZE = 50;
const PREVIEW_CHARS = 120;

function pageParams(cursor: string | null): URLSearchParams {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (cursor !== null) params.set("cursor", cursor);
  return params;
}

export function DeadLettersPage() {
  const now = useNow(10_000);
  const [page, setPage] = useState<DeadLetterPage | null>(null);
  const [loadingOlder, setLoadingOlder] = useState(false);
  const [olderError, setOlderError] = useState<string | null>(null);

  usePolling(async (signal) => setPage(await api.deadLetters(pageParams(null), signal)), null, []);

  const loadOlder = async (): Promise<void> => {
    if (page?.next_cursor == null) return;
    setLoadingOlder(true);
    setOlderError(null);
    try {
      const older = await api.deadLetters(pageParams(page.next_cursor));
      setPage({ ...older, dead_letters: [...page.dead_letters, ...older.dead_letters] });
    } catch (error) {
      setOlderError(describeError(error));
    } finally {
      setLoadingOlder(false);
    }
  };

  if (page === null) return <p className="muted">Loading dead letters…</p>;
  return (
    <section>
      <h1>Dead letters</h1>
      <p className="muted">
        {page.total} in all. Records the processors could not read are kept here, with the reason, instead of stopping the
        pipeline.
      </p>
      {page.dead_letters.length === 0 ? (
        <p className="empty">No dead letters.</p>
      ) : (
        <ol className="dead-letters">
          {page.dead_letters.map((letter) => (
            <DeadLetterRow key={`${letter.source_topic}/${letter.partition}/${letter.offset}/${letter.ts}`} letter={letter} now={now} />
          ))}
        </ol>
      )}
      {page.next_cursor !== null ? (
        <div className="paging">
          <button type="button" className="button" data-testid="load-older" disabled={loadingOlder} onClick={() => void loadOlder()}>
            {loadingOlder ? "Loading…" : "Load older"}
          </button>
          {olderError ? <p className="inline-error" role="alert">{olderError}</p> : null}
        </div>
      ) : null}
    </section>
  );
}

function DeadLetterRow({ letter, now }: { letter: DeadLetterView; now: number }) {
  const [expanded, setExpanded] = useState(false);
  const long = letter.preview.length > PREVIEW_CHARS;
  const shown = expanded || !long ? letter.preview : `${letter.preview.slice(0, PREVIEW_CHARS)}…`;
  return (
    <li className="dead-letter" data-testid="dead-letter-row">
      <div className="dead-letter-head">
        <strong>{letter.reason}</strong>
        {letter.field ? <span className="mono small"> at {letter.field}</span> : null}
        <span className="muted small">
          {" "}
          · <TimeText iso={letter.ts} now={now} />
        </span>
      </div>
      <div className="muted small mono">
        {letter.source_topic}[{letter.partition}] @ {letter.offset}
        {letter.key !== null ? ` · key ${letter.key}` : ""} · {letter.value_bytes} bytes
      </div>
      <pre className="code preview">{shown}</pre>
      {long || letter.value_truncated ? (
        <div className="small">
          {long ? (
            <button type="button" className="link-button" aria-expanded={expanded} onClick={() => setExpanded(!expanded)}>
              {expanded ? "Show less" : "Show all of the preview"}
            </button>
          ) : null}
          {letter.value_truncated && (expanded || !long) ? <span className="muted"> (the preview is the value's first bytes only)</span> : null}
        </div>
      ) : null}
    </li>
  );
}
