import { useQuery } from "@tanstack/react-query";
import { Link } from "react-router";
import { client, unwrap } from "../api/client";
import { useWorkflowNames, useWorkflows } from "../api/hooks";
import { Badge, Empty, ErrorNote, Query, Time, percent } from "../components/ui";
import { startOfToday } from "../lib/time";

export function Dashboard() {
  const since = startOfToday().toISOString();
  const counts = useQuery({
    queryKey: ["counts", since],
    queryFn: () => unwrap(client.GET("/v1/analytics/executions", { params: { query: { since } } })),
    refetchInterval: 30_000,
  });
  // The delivery report counts UTC days.
  const utcToday = new Date().toISOString().slice(0, 10);
  const rates = useQuery({
    queryKey: ["rates", "today", utcToday],
    queryFn: () => unwrap(client.GET("/v1/analytics/deliveries", { params: { query: { from: utcToday, to: utcToday } } })),
    refetchInterval: 30_000,
  });
  const health = useQuery({
    queryKey: ["readyz"],
    // 503 is an answer here: it says which check failed.
    queryFn: async () => (await fetch("/readyz")).json() as Promise<{ status: string; node: string; checks: { name: string; ok: boolean; error?: string | null }[] }>,
    refetchInterval: 10_000,
  });
  const cluster = useQuery({
    queryKey: ["cluster"],
    queryFn: () => unwrap(client.GET("/cluster")),
    refetchInterval: 10_000,
  });
  const recent = useQuery({
    queryKey: ["executions", "recent"],
    queryFn: () => unwrap(client.GET("/v1/executions", { params: { query: { limit: 10 } } })),
    refetchInterval: 5_000,
  });
  const workflows = useWorkflows();
  const names = useWorkflowNames();

  return (
    <div>
      <h1>Dashboard</h1>
      <Query q={counts} what="counts">
        {(c) => (
          <div className="grid" aria-label="Executions">
            <Stat n={c.running + c.pending} l="running" />
            <Stat n={c.waiting} l="asleep (waiting)" />
            <Stat n={c.paused} l="paused" />
            <Stat n={c.completed} l="completed today" />
            <Stat n={c.failed} l="failed today" />
          </div>
        )}
      </Query>
      <h2>
        Deliveries today <span className="hint">(the UTC day {utcToday})</span>
      </h2>
      <Query q={rates} what="deliveries">
        {(r) =>
          r.channels.length === 0 ? (
            <Empty>No messages sent today. Journeys with email, SMS, push or chat actions show their rates here.</Empty>
          ) : (
            <table>
              <thead>
                <tr>
                  <th>Channel</th>
                  <th>Sent</th>
                  <th>Delivered</th>
                  <th>Opened</th>
                  <th>Clicked</th>
                  <th>Bounce rate</th>
                </tr>
              </thead>
              <tbody>
                {r.channels.map((c) => (
                  <tr key={c.channel}>
                    <td>{c.channel}</td>
                    <td>{c.sent}</td>
                    <td>
                      {c.delivered} <span className="muted">{percent(c.delivery_rate)}</span>
                    </td>
                    <td>
                      {c.opened} <span className="muted">{percent(c.open_rate)}</span>
                    </td>
                    <td>
                      {c.clicked} <span className="muted">{percent(c.click_rate)}</span>
                    </td>
                    <td>{percent(c.bounce_rate)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )
        }
      </Query>
      <div className="grid" style={{ gridTemplateColumns: "1fr 1fr", marginTop: 12 }}>
        <section className="card">
          <h2 style={{ marginTop: 0 }}>System health</h2>
          {health.error && <ErrorNote error={health.error} />}
          {health.data && (
            <>
              <p>
                Node <code>{health.data.node}</code>:{" "}
                <Badge value={health.data.status} kind={health.data.checks.every((c) => c.ok) ? "ok" : "bad"} />
              </p>
              <ul>
                {health.data.checks.map((c) => (
                  <li key={c.name}>
                    {c.name}: <Badge value={c.ok ? "ready" : "failing"} kind={c.ok ? "ok" : "bad"} /> {c.error && <span className="error">{c.error}</span>}
                  </li>
                ))}
              </ul>
            </>
          )}
          {cluster.data && (
            <p className="muted">
              {cluster.data.nodes.length} node(s) {cluster.data.shared ? "in a cluster" : "(embedded)"}: {" "}
              <Link to="/nodes">see the cluster</Link>
            </p>
          )}
        </section>
        <section className="card">
          <h2 style={{ marginTop: 0 }}>Workflows</h2>
          <Query q={workflows} what="workflows">
            {(ws) =>
              ws.length === 0 ? (
                <Empty>
                  No workflow yet. <Link to="/workflows">Create one</Link> and draw its journey.
                </Empty>
              ) : (
                <ul>
                  {ws.slice(0, 8).map((w) => (
                    <li key={w.id}>
                      <Link to={`/workflows/${encodeURIComponent(w.key)}`}>{w.name || w.key}</Link>{" "}
                      {w.latest_version ? <Badge value={`v${w.latest_version}`} kind="ok" /> : <Badge value="draft" />}
                    </li>
                  ))}
                </ul>
              )
            }
          </Query>
        </section>
      </div>
      <h2>Recent activity</h2>
      <Query q={recent} what="executions">
        {(page) =>
          page.items.length === 0 ? (
            <Empty>No executions yet. Publish a workflow and start one (its page has a Start button).</Empty>
          ) : (
            <table>
              <thead>
                <tr>
                  <th>Execution</th>
                  <th>Workflow</th>
                  <th>Status</th>
                  <th>At</th>
                  <th>Updated</th>
                </tr>
              </thead>
              <tbody>
                {page.items.map((e) => (
                  <tr key={e.id}>
                    <td>
                      <Link to={`/executions/${e.id}`} className="mono">
                        {e.id}
                      </Link>
                    </td>
                    <td>{names.get(e.workflow_id) ?? e.workflow_id}</td>
                    <td>
                      <Badge value={e.status} />
                    </td>
                    <td>{e.current_node ?? "—"}</td>
                    <td>
                      <Time at={e.updated_at} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )
        }
      </Query>
    </div>
  );
}

function Stat({ n, l }: { n: number; l: string }) {
  return (
    <div className="card stat">
      <div className="n">{n.toLocaleString()}</div>
      <div className="l">{l}</div>
    </div>
  );
}
