// `/login`: the key once, then the page asked for (`next`). The service answers this page
// without a key; everything else sends a browser without a session here.

import { type FormEvent, useState } from "react";
import { useSearchParams } from "react-router-dom";
import { logIn, safeNext } from "../auth";

export function LoginPage() {
  const [params] = useSearchParams();
  const [key, setKey] = useState("");
  const [error, setError] = useState<string | null>(params.get("error") || null);
  const [busy, setBusy] = useState(false);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    const problem = await logIn(key.trim());
    setBusy(false);
    if (problem === null) {
      // A full load, so that every page starts from the new session.
      window.location.assign(safeNext(params.get("next")));
    } else {
      setError(problem);
    }
  }

  return (
    <section className="login">
      <h1>Log in to Steplog</h1>
      {/* Without script the form posts itself: the service answers 303 to `next`. */}
      <form method="post" action="/login" onSubmit={submit}>
        <input type="hidden" name="next" value={safeNext(params.get("next"))} />
        <label className="field">
          API key (read, operate or admin)
          <input
            name="key"
            type="password"
            autoComplete="current-password"
            required
            autoFocus
            value={key}
            onChange={(event) => setKey(event.target.value)}
            data-testid="login-key"
          />
        </label>
        <button className="button" type="submit" disabled={busy || key.trim() === ""} data-testid="login-submit">
          Log in
        </button>
        {error !== null && (
          <p className="inline-error" role="alert" data-testid="login-error">
            {error}
          </p>
        )}
      </form>
      <p className="muted small">
        <code>steplog dev</code> keeps its admin key in <code>&lt;data dir&gt;/admin.key</code>; make others with{" "}
        <code>steplog keys create</code>.
      </p>
    </section>
  );
}
