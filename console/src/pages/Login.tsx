import { useState } from "react";
import { apiKey, client, unwrap, ApiProblem } from "../api/client";

/** Asks for an API key; it is kept for this tab's session only. */
export function Login({ onDone }: { onDone: () => void }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  return (
    <div className="login">
      <form
        className="card"
        onSubmit={async (e) => {
          e.preventDefault();
          setBusy(true);
          setError(null);
          apiKey.set(key.trim());
          try {
            await unwrap(client.GET("/v1/workflows", { params: { query: { limit: 1 } } }));
            onDone();
          } catch (err) {
            apiKey.clear();
            setError(
              err instanceof ApiProblem && err.status === 401
                ? "Sojourn refused this key. Check it, or create one with `sojourn keys create`."
                : (err as Error).message,
            );
          } finally {
            setBusy(false);
          }
        }}
      >
        <h1>Sign in to Sojourn</h1>
        <p className="muted">
          This node asks for an API key. It is kept in this browser tab only and forgotten when the tab closes.
        </p>
        <label>
          API key
          <input
            type="password"
            autoComplete="off"
            value={key}
            onChange={(e) => setKey(e.target.value)}
            placeholder="sk_…"
            autoFocus
            required
          />
        </label>
        {error && (
          <p className="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" className="primary" disabled={busy || !key.trim()}>
          {busy ? "Checking…" : "Sign in"}
        </button>
      </form>
    </div>
  );
}
