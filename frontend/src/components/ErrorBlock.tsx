import type { ErrorView } from "../api";

/** An error's type and message, its stack folded away. */
export function ErrorBlock({ error }: { error: ErrorView }) {
  return (
    <div className="error-block">
      <p>
        <strong>{error.type}</strong>: {error.message}
      </p>
      {error.stack ? (
        <details>
          <summary>Stack</summary>
          <pre className="code">{error.stack}</pre>
        </details>
      ) : null}
    </div>
  );
}
