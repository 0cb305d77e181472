import { lazy, Suspense, useEffect, useState } from "react";
import { NavLink, Route, Routes, useLocation } from "react-router";
import { ErrorBoundary } from "./components/ErrorBoundary";
import { useQueryClient } from "@tanstack/react-query";
import { apiKey, onUnauthorized } from "./api/client";
import { Login } from "./pages/Login";
import { Dashboard } from "./pages/Dashboard";
import { Workflows } from "./pages/Workflows";
import { Executions } from "./pages/Executions";
import { Triggers } from "./pages/Triggers";
import { Registry } from "./pages/Registry";
import { Audience } from "./pages/Audience";
import { Cluster } from "./pages/Cluster";
import { viewerZone } from "./lib/time";

// The canvas pages carry @xyflow/react and the form generator: loaded when
// first opened.
const Builder = lazy(() => import("./pages/Builder"));
const Inspector = lazy(() => import("./pages/Inspector"));
const Analytics = lazy(() => import("./pages/Analytics"));

const NAV = [
  ["/", "Dashboard"],
  ["/workflows", "Workflows"],
  ["/executions", "Executions"],
  ["/triggers", "Triggers"],
  ["/analytics", "Analytics"],
  ["/registry", "Registry"],
  ["/audience", "Audience"],
  ["/nodes", "Cluster"],
] as const;

export function App() {
  const queries = useQueryClient();
  const [locked, setLocked] = useState(false);
  const location = useLocation();
  useEffect(
    () =>
      onUnauthorized(() => {
        setLocked(true);
      }),
    [],
  );
  return (
    <div className="shell">
      {/* Over the pages, not instead of them: an open builder keeps its edits. */}
      {locked && (
        <div className="modal-back login-over">
          <Login
            onDone={() => {
              setLocked(false);
              queries.invalidateQueries();
            }}
          />
        </div>
      )}
      <nav className="sidebar" aria-label="Sections">
        <div className="brand">Sojourn</div>
        {NAV.map(([to, label]) => (
          <NavLink key={to} to={to} end={to === "/"}>
            {label}
          </NavLink>
        ))}
        <div className="sidebar-foot">
          <span title="Dates are shown in this zone">{viewerZone()}</span>
          {apiKey.get() && (
            <button
              className="link"
              onClick={() => {
                apiKey.clear();
                // Nothing read with the key stays on screen.
                queries.clear();
                setLocked(true);
              }}
            >
              Sign out
            </button>
          )}
        </div>
      </nav>
      <main className="content">
        <ErrorBoundary resetKey={location.pathname}>
        <Suspense fallback={<p className="muted">Loading…</p>}>
          <Routes>
            <Route path="/" element={<Dashboard />} />
            <Route path="/workflows" element={<Workflows />} />
            <Route path="/workflows/:id" element={<Builder />} />
            <Route path="/executions" element={<Executions />} />
            <Route path="/executions/:id" element={<Inspector />} />
            <Route path="/triggers" element={<Triggers />} />
            <Route path="/analytics" element={<Analytics />} />
            <Route path="/analytics/:id" element={<Analytics />} />
            <Route path="/registry" element={<Registry />} />
            <Route path="/audience" element={<Audience />} />
            {/* Not `/cluster`: that is the API's. */}
            <Route path="/nodes" element={<Cluster />} />
            <Route path="*" element={<p>No such page. Pick a section on the left.</p>} />
          </Routes>
        </Suspense>
        </ErrorBoundary>
      </main>
    </div>
  );
}
