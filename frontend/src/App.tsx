// The page frame (navigation, who is logged in, the error banner) and the routes the web
// service answers with index.html: /, /runs, /runs/{run_id}, /ops, /dead-letters, and /login,
// which has no frame (nobody is logged in there yet).

import { NavLink, Route, Routes, useLocation } from "react-router-dom";
import { logOut } from "./auth";
import { ErrorBanner } from "./components/ErrorBanner";
import { useMe } from "./hooks/useMe";
import { DeadLettersPage } from "./pages/DeadLettersPage";
import { LoginPage } from "./pages/LoginPage";
import { NotFound } from "./pages/NotFound";
import { OpsPage } from "./pages/OpsPage";
import { RunListPage } from "./pages/RunListPage";
import { RunPage } from "./pages/RunPage";

export function App() {
  if (useLocation().pathname === "/login") {
    return (
      <main id="main">
        <LoginPage />
      </main>
    );
  }
  return <Framed />;
}

function Framed() {
  const me = useMe();
  return (
    <>
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <NavLink to="/runs" className="brand">
          Steplog
        </NavLink>
        <nav aria-label="Main">
          <NavLink to="/runs">Runs</NavLink>
          <NavLink to="/ops">Operations</NavLink>
          {/* Dead letters carry no project: only keys of every project may read them. */}
          {(me === null || me.projects === null) && <NavLink to="/dead-letters">Dead letters</NavLink>}
        </nav>
        <div className="whoami">
          {me !== null && (
            <span className="muted small" data-testid="whoami" title={projectsText(me.projects)}>
              {me.key_id} · {me.role}
            </span>
          )}
          <button type="button" className="link-button small" onClick={() => void logOut()} data-testid="logout">
            Log out
          </button>
        </div>
      </header>
      <ErrorBanner />
      <main id="main">
        <Routes>
          <Route path="/" element={<RunListPage />} />
          <Route path="/runs" element={<RunListPage />} />
          <Route path="/runs/:runId" element={<RunPage />} />
          <Route path="/ops" element={<OpsPage />} />
          <Route path="/dead-letters" element={<DeadLettersPage />} />
          <Route path="*" element={<NotFound what="This page" />} />
        </Routes>
      </main>
    </>
  );
}

function projectsText(projects: string[] | null): string {
  return projects === null ? "every project" : `projects: ${projects.join(", ")}`;
}
