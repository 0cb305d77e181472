import { useState } from "react";
import { Link, useNavigate } from "react-router";
import { useMutation, useQueryClient } from "@tanstack/react-query";
import { client, unwrap } from "../api/client";
import { useWorkflows } from "../api/hooks";
import { Badge, Empty, ErrorNote, Query, Time } from "../components/ui";

/** A new journey: a start node that an API call fires, leading to an exit. */
function starterDocument(key: string, name: string) {
  return {
    key,
    name,
    nodes: [
      { id: "start", type: "start", position: { x: 0, y: 0 }, config: { triggers: [{ kind: "api" }] } },
      { id: "done", type: "exit", position: { x: 0, y: 220 }, config: { outcome: "done" } },
    ],
    edges: [{ from: "start", to: "done" }],
  };
}

export function Workflows() {
  const [archived, setArchived] = useState(false);
  const workflows = useWorkflows(archived);
  const [key, setKey] = useState("");
  const [name, setName] = useState("");
  const navigate = useNavigate();
  const queries = useQueryClient();
  const create = useMutation({
    mutationFn: () =>
      unwrap(
        client.POST("/v1/workflows", {
          body: { key: key.trim(), name: name.trim() || null, definition: starterDocument(key.trim(), name.trim() || key.trim()) },
        }),
      ),
    onSuccess: (w) => {
      queries.invalidateQueries({ queryKey: ["workflows"] });
      navigate(`/workflows/${encodeURIComponent(w.key)}`);
    },
  });
  return (
    <div>
      <div className="spread">
        <h1>Workflows</h1>
        <label className="row" style={{ flexDirection: "row" }}>
          <input type="checkbox" checked={archived} onChange={(e) => setArchived(e.target.checked)} /> show archived
        </label>
      </div>
      <form
        className="card filters"
        onSubmit={(e) => {
          e.preventDefault();
          create.mutate();
        }}
      >
        <label>
          Key
          <input value={key} onChange={(e) => setKey(e.target.value)} placeholder="welcome-series" pattern="[A-Za-z0-9._\-]+" required />
        </label>
        <label>
          Name
          <input value={name} onChange={(e) => setName(e.target.value)} placeholder="Welcome series" />
        </label>
        <button className="primary" disabled={!key.trim() || create.isPending}>
          New workflow
        </button>
        <span className="hint">Letters, digits, “-”, “_” and “.”; the key names it in API calls.</span>
      </form>
      <ErrorNote error={create.error} />
      <Query q={workflows} what="workflows">
        {(ws) =>
          ws.length === 0 ? (
            <Empty>No workflow yet: give the first one a key above, then draw its journey.</Empty>
          ) : (
            <table>
              <thead>
                <tr>
                  <th>Workflow</th>
                  <th>Status</th>
                  <th>Latest version</th>
                  <th>Updated</th>
                  <th></th>
                </tr>
              </thead>
              <tbody>
                {ws.map((w) => (
                  <tr key={w.id}>
                    <td>
                      <Link to={`/workflows/${encodeURIComponent(w.key)}`}>{w.name || w.key}</Link>
                      <div className="muted mono">{w.key}</div>
                    </td>
                    <td>
                      {w.archived_at ? <Badge value="archived" kind="bad" /> : w.latest_version ? <Badge value="published" kind="ok" /> : <Badge value="draft" />}
                    </td>
                    <td>{w.latest_version ? `v${w.latest_version}` : "—"}</td>
                    <td>
                      <Time at={w.updated_at} />
                    </td>
                    <td className="row">
                      <Link to={`/executions?workflow=${encodeURIComponent(w.key)}`}>executions</Link>
                      <Link to={`/analytics/${encodeURIComponent(w.key)}`}>analytics</Link>
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
