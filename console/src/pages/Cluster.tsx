import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { client, unwrap } from "../api/client";
import { Badge, ErrorNote, Query } from "../components/ui";

function ago(ms: number): string {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

export function Cluster() {
  const queries = useQueryClient();
  const q = useQuery({ queryKey: ["cluster"], queryFn: () => unwrap(client.GET("/cluster")), refetchInterval: 3_000 });
  const drain = useMutation({
    mutationFn: (node: string) => unwrap(client.POST("/cluster/nodes/{node}/drain", { params: { path: { node }, query: {} } })),
    onSuccess: () => queries.invalidateQueries({ queryKey: ["cluster"] }),
  });
  return (
    <div>
      <h1>Cluster</h1>
      <ErrorNote error={drain.error} />
      <Query q={q} what="the cluster">
        {(c) => (
          <>
            <p className="muted">
              {c.shared ? "Nodes sharing Redis leases." : "One embedded node (in-process leases)."} Answered by <code>{c.node}</code>.
            </p>
            <table>
              <thead>
                <tr>
                  <th>Node</th>
                  <th>Address</th>
                  <th>Resident actors</th>
                  <th>Heartbeat</th>
                  <th>Up since</th>
                  <th>State</th>
                  <th></th>
                </tr>
              </thead>
              <tbody>
                {c.nodes.map((n) => (
                  <tr key={n.id}>
                    <td className="mono">{n.id}</td>
                    <td className="mono">{n.address}</td>
                    <td>{n.actors}</td>
                    <td>{ago(n.last_seen_ms)}</td>
                    <td>{new Date(n.started_ms).toLocaleString()}</td>
                    <td>{n.draining ? <Badge value="draining" kind="warn" /> : <Badge value="taking work" kind="ok" />}</td>
                    <td>
                      <button
                        className="danger"
                        disabled={n.draining || drain.isPending}
                        onClick={() => {
                          if (confirm(`Drain ${n.id}? It passivates its executions and takes no new ones; the other nodes take over.`)) drain.mutate(n.id);
                        }}
                      >
                        Drain
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </>
        )}
      </Query>
    </div>
  );
}
