import { formatAbsolute, formatRelative, parseTime } from "../logic/time";

/** A time relative to now ("5 min ago"), the absolute time in its title and <time> element. */
export function TimeText({ iso, now }: { iso: string | null; now: number }) {
  const ms = parseTime(iso);
  if (ms === null || iso === null) return <span className="muted">–</span>;
  return (
    <time dateTime={iso} title={formatAbsolute(ms)}>
      {formatRelative(ms, now)}
    </time>
  );
}
