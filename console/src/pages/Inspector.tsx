// One execution: its journey with the path taken and where it is now, the
// journal as a timeline, node attempts and deliveries, variables, the lease
// holder, and the operator's buttons.
import { useEffect, useMemo, useState } from "react";
import { Link, useParams } from "react-router";
import { useInfiniteQuery, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { client, unwrap } from "../api/client";
import { useWorkflowNames } from "../api/hooks";
import { JourneyGraph } from "../components/JourneyGraph";
import { DeliveriesTable } from "../components/pickers";
import { Badge, Empty, ErrorNote, Loading, Query, Time } from "../components/ui";
import type { WfDoc } from "../lib/graph";
import { formatTime, viewerZone } from "../lib/time";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);

type Op = "pause" | "resume" | "cancel" | "retry";

export default function Inspector() {
  const { id = "" } = useParams();
  const queries = useQueryClient();
  const names = useWorkflowNames();
  const exe = useQuery({
    queryKey: ["execution", id],
    queryFn: () => unwrap(client.GET("/v1/executions/{execution}", { params: { path: { execution: id }, query: {} } })),
    refetchInterval: (q) => (q.state.data && TERMINAL.has(q.state.data.status) ? false : 1_500),
  });
  const status = exe.data?.status;
  const live = status !== undefined && !TERMINAL.has(status);
  // Polling stops at the end: read the journal, attempts and deliveries
  // once more when the execution finishes, so its last steps show.
  useEffect(() => {
    if (status && TERMINAL.has(status)) {
      for (const k of ["journal", "execution-nodes", "execution-deliveries"]) queries.invalidateQueries({ queryKey: [k, id] });
    }
  }, [status, id, queries]);
  const journal = useInfiniteQuery({
    queryKey: ["journal", id],
    initialPageParam: undefined as number | undefined,
    queryFn: ({ pageParam }) => unwrap(client.GET("/v1/executions/{execution}/journal", { params: { path: { execution: id }, query: { cursor: pageParam, limit: 500 } } })),
    getNextPageParam: (last) => last.next_cursor ?? undefined,
    refetchInterval: live ? 1_500 : false,
  });
  const nodes = useQuery({
    queryKey: ["execution-nodes", id],
    queryFn: () => unwrap(client.GET("/v1/executions/{execution}/nodes", { params: { path: { execution: id } } })),
    refetchInterval: live ? 2_000 : false,
  });
  const deliveries = useQuery({
    queryKey: ["execution-deliveries", id],
    queryFn: () => unwrap(client.GET("/v1/deliveries", { params: { query: { execution: id, limit: 100 } } })),
    refetchInterval: live ? 3_000 : false,
  });
  const version = useQuery({
    queryKey: ["version", exe.data?.workflow_id, exe.data?.version],
    enabled: Boolean(exe.data),
    queryFn: () =>
      unwrap(
        client.GET("/v1/workflows/{workflow}/versions/{version}", {
          params: { path: { workflow: exe.data!.workflow_id, version: exe.data!.version } },
        }),
      ),
    staleTime: Infinity,
  });
  const op = useMutation({
    mutationFn: (o: Op) => {
      const path = { params: { path: { execution: id } } };
      switch (o) {
        case "pause":
          return unwrap(client.POST("/v1/executions/{execution}/pause", { ...path, body: {} }));
        case "resume":
          return unwrap(client.POST("/v1/executions/{execution}/resume", path));
        case "cancel":
          return unwrap(client.POST("/v1/executions/{execution}/cancel", { ...path, body: {} }));
        case "retry":
          return unwrap(client.POST("/v1/executions/{execution}/retry", path));
      }
    },
    onSuccess: () => {
      queries.invalidateQueries({ queryKey: ["execution", id] });
      queries.invalidateQueries({ queryKey: ["journal", id] });
    },
  });
  const entries = useMemo(() => (journal.data?.pages ?? []).flatMap((p) => p.items), [journal.data]);
  const path = useMemo(() => {
    const visited = new Set<string>();
    const taken = new Set<string>();
    for (const e of entries) {
      const entry = e.entry as { node?: string; branch?: string };
      if (e.type === "node_entered" && entry.node) visited.add(entry.node);
      if (e.type === "branch_taken" && entry.node) taken.add(`${entry.node}/${entry.branch === "next" ? "" : (entry.branch ?? "")}`);
    }
    return { visited, taken };
  }, [entries]);
  const [focus, setFocus] = useState<string | null>(null);
  const current = exe.data?.current_node;
  const decorate = useMemo(
    () => (node: string) => ({ visited: path.visited.has(node), current: node === current && live, note: node === focus ? "selected in the journal" : undefined }),
    [path, current, live, focus],
  );

  if (exe.error) return <ErrorNote error={exe.error} />;
  if (!exe.data) return <Loading what="the execution" />;
  const e = exe.data;
  const ops: Op[] = [];
  if (e.status === "paused") ops.push("resume");
  else if (!TERMINAL.has(e.status)) ops.push("pause");
  if (e.status === "paused" || e.status === "failed") ops.push("retry");
  if (!TERMINAL.has(e.status)) ops.push("cancel");
  return (
    <div>
      <div className="spread">
        <h1>
          Execution <span className="mono">{e.id}</span>
        </h1>
        <div className="row">
          {ops.map((o) => (
            <button key={o} onClick={() => op.mutate(o)} disabled={op.isPending} className={o === "cancel" ? "danger" : ""}>
              {o[0].toUpperCase() + o.slice(1)}
            </button>
          ))}
        </div>
      </div>
      <ErrorNote error={op.error} />
      <div className="card row" style={{ gap: 24, marginBottom: 12 }} data-testid="execution-summary">
        <div>
          status <Badge value={e.status} />
          {e.outcome && (
            <>
              {" "}
              outcome <b>{e.outcome}</b>
            </>
          )}
        </div>
        <div>
          workflow <Link to={`/workflows/${encodeURIComponent(names.get(e.workflow_id) ?? e.workflow_id)}`}>{names.get(e.workflow_id) ?? e.workflow_id}</Link> v{e.version}
        </div>
        <div>at node {e.current_node ?? "—"}</div>
        <div>subject {e.subject ?? "—"}</div>
        <div>
          lease holder <span className="mono">{e.lease_holder ?? "none (passivated)"}</span> · epoch {e.lease_epoch}
        </div>
        <div>
          started <Time at={e.created_at} />
        </div>
        <div>
          zone <code>{e.timezone}</code>
        </div>
      </div>
      {e.pause ? <div className="alert">Paused: {JSON.stringify(e.pause)}</div> : null}
      {e.error ? <div className="alert">Error: {typeof e.error === "string" ? e.error : JSON.stringify(e.error)}</div> : null}
      <Query q={version} what="the journey">
        {(v) => <JourneyGraph doc={v.definition as WfDoc} decorate={decorate} visitedEdges={path.taken} height={380} />}
      </Query>
      <div className="grid" style={{ gridTemplateColumns: "3fr 2fr", alignItems: "start", marginTop: 12 }}>
        <section className="card">
          <h2 style={{ marginTop: 0 }}>
            Journal <span className="hint">times in {viewerZone()}</span>
          </h2>
          <ErrorNote error={journal.error} />
          {journal.isPending ? (
            <Loading what="the journal" />
          ) : entries.length === 0 ? (
            <Empty>Nothing happened yet.</Empty>
          ) : (
            <ol className="timeline" aria-label="Journal">
              {entries.map((j) => {
                const node = (j.entry as { node?: string }).node;
                return (
                  <li key={j.position} className={node && node === focus ? "active" : ""} onMouseEnter={() => setFocus(node ?? null)}>
                    <span className="at" title={formatTime(j.at, e.timezone)}>
                      {new Date(j.at).toLocaleTimeString()}
                    </span>
                    <span>{j.text}</span>
                  </li>
                );
              })}
            </ol>
          )}
          {journal.hasNextPage && <button onClick={() => journal.fetchNextPage()}>Load more</button>}
        </section>
        <div>
          <section className="card">
            <h2 style={{ marginTop: 0 }}>Variables</h2>
            <pre>{JSON.stringify(e.vars, null, 2)}</pre>
            <h3>Input</h3>
            <pre>{JSON.stringify(e.input, null, 2)}</pre>
          </section>
          <section className="card" style={{ marginTop: 12 }}>
            <h2 style={{ marginTop: 0 }}>Node attempts</h2>
            <Query q={nodes} what="attempts">
              {(ns) =>
                ns.length === 0 ? (
                  <p className="muted">No action ran.</p>
                ) : (
                  <table>
                    <thead>
                      <tr>
                        <th>Node</th>
                        <th>Try</th>
                        <th>Status</th>
                        <th>Started</th>
                      </tr>
                    </thead>
                    <tbody>
                      {ns.map((n) => (
                        <tr key={`${n.node_id}/${n.attempt}`}>
                          <td>
                            {n.node_id} <div className="muted">{n.action}</div>
                          </td>
                          <td>{n.attempt}</td>
                          <td>
                            <Badge value={n.status} kind={n.status === "succeeded" ? "ok" : n.status === "failed" ? "bad" : undefined} />
                            {n.error && <div className="error">{n.error}</div>}
                          </td>
                          <td>
                            <Time at={n.started_at} />
                          </td>
                        </tr>
                      ))}
                    </tbody>
                  </table>
                )
              }
            </Query>
          </section>
          <section className="card" style={{ marginTop: 12 }}>
            <h2 style={{ marginTop: 0 }}>Deliveries</h2>
            <Query q={deliveries} what="deliveries">
              {(page) =>
                page.items.length === 0 ? (
                  <p className="muted">No message sent.</p>
                ) : (
                  <DeliveriesTable items={page.items} label="Deliveries" />
                )
              }
            </Query>
          </section>
        </div>
      </div>
    </div>
  );
}
