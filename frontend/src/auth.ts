// The dashboard's session (steplog/server/web_auth.py): POST /login with the key sets an
// HttpOnly session cookie this script never sees, and a `steplog_csrf` cookie it echoes in the
// X-CSRF-Token header of every POST. A 401 from any call means the session ended (expired,
// logged out, its key revoked): back to the login page, which returns here afterwards.

export const CSRF_COOKIE = "steplog_csrf";
export const CSRF_HEADER = "X-CSRF-Token";

/** Who is logged in: `GET /v1/me`. `projects` null: every project. */
export interface Me {
  key_id: string;
  role: string;
  projects: string[] | null;
}

export function csrfToken(): string {
  for (const part of document.cookie.split(";")) {
    const [name, ...value] = part.trim().split("=");
    if (name === CSRF_COOKIE) return decodeURIComponent(value.join("="));
  }
  return "";
}

/** A path of this site to go to after login: anything else (another site's URL, `//host`)
 * would make the login page an open redirect. */
export function safeNext(next: string | null): string {
  if (!next || !next.startsWith("/") || next.startsWith("//") || next.startsWith("/\\")) return "/runs";
  return next;
}

/** Leave for the login page, to come back to the page shown now. */
export function toLogin(): void {
  if (window.location.pathname === "/login") return;
  const next = window.location.pathname + window.location.search;
  window.location.assign(`/login?next=${encodeURIComponent(next)}`);
}

/** Log in with a key: null when done, else what was wrong (the service's words). */
export async function logIn(key: string): Promise<string | null> {
  let response: Response;
  try {
    response = await fetch("/login", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ key }),
    });
  } catch (error) {
    return `The Steplog service could not be reached (${String(error)}).`;
  }
  if (response.ok) return null;
  try {
    const body = (await response.json()) as { error?: unknown };
    return String(body.error ?? `${response.status} ${response.statusText}`);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

export async function logOut(): Promise<void> {
  try {
    await fetch("/logout", { method: "POST", headers: { [CSRF_HEADER]: csrfToken() } });
  } finally {
    window.location.assign("/login");
  }
}
