import { useApiProblems } from "../hooks/apiHealth";
import { RETRY_MS } from "../hooks/usePolling";

/** The service's errors now (503: ClickHouse unavailable; unreachable); gone once a retry works. */
export function ErrorBanner() {
  const problems = useApiProblems();
  if (problems.length === 0) return null;
  return (
    <div className="error-banner" role="alert" data-testid="error-banner">
      {problems.map((problem) => (
        <p key={problem}>{problem}</p>
      ))}
      <p className="small">Retrying every {RETRY_MS / 1000} s.</p>
    </div>
  );
}
