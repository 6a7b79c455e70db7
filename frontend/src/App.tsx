// The page frame (navigation, the error banner) and the routes the web service answers with
// index.html: /, /runs, /runs/{run_id}, /ops, /dead-letters.

import { NavLink, Route, Routes } from "react-router-dom";
import { ErrorBanner } from "./components/ErrorBanner";
import { DeadLettersPage } from "./pages/DeadLettersPage";
import { NotFound } from "./pages/NotFound";
import { OpsPage } from "./pages/OpsPage";
import { RunListPage } from "./pages/RunListPage";
import { RunPage } from "./pages/RunPage";

export function App() {
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
          <NavLink to="/dead-letters">Dead letters</NavLink>
        </nav>
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
