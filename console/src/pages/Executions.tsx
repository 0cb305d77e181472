import { useState } from "react";
import { Link, useSearchParams } from "react-router";
import { useInfiniteQuery } from "@tanstack/react-query";
import { client, unwrap } from "../api/client";
import { useWorkflowNames } from "../api/hooks";
import { WorkflowSelect } from "../components/pickers";
import { Badge, Empty, ErrorNote, Loading, Time } from "../components/ui";

const STATUSES = ["pending", "running", "waiting", "paused", "completed", "failed", "cancelled"] as const;

/** `datetime-local` (the viewer's zone) to an instant. */
function instant(local: string): string | undefined {
  if (!local) return undefined;
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}

export function Executions() {
  const [params, setParams] = useSearchParams();
  const filters = {
    workflow: params.get("workflow") ?? "",
    status: params.get("status") ?? "",
    subject: params.get("subject") ?? "",
    after: params.get("after") ?? "",
    before: params.get("before") ?? "",
  };
  const [search, setSearch] = useState("");
  const names = useWorkflowNames();
  const set = (k: string, v: string) => {
    const next = new URLSearchParams(params);
    if (v) next.set(k, v);
    else next.delete(k);
    setParams(next, { replace: true });
  };
  const q = useInfiniteQuery({
    queryKey: ["executions", filters],
    initialPageParam: undefined as string | undefined,
    queryFn: ({ pageParam }) =>
      unwrap(
        client.GET("/v1/executions", {
          params: {
            query: {
              workflow: filters.workflow || undefined,
              status: (filters.status || undefined) as (typeof STATUSES)[number] | undefined,
              subject: filters.subject || undefined,
              created_after: instant(filters.after),
              created_before: instant(filters.before),
              cursor: pageParam,
              limit: 50,
            },
          },
        }),
      ),
    getNextPageParam: (last) => last.next_cursor ?? undefined,
    refetchInterval: 5_000,
  });
  const items = (q.data?.pages ?? []).flatMap((p) => p.items);
  const needle = search.trim().toLowerCase();
  const shown = needle
    ? items.filter((e) => e.id.toLowerCase().includes(needle) || (e.subject ?? "").toLowerCase().includes(needle) || (e.current_node ?? "").toLowerCase().includes(needle))
    : items;
  return (
    <div>
      <h1>Executions</h1>
      <div className="filters card" role="search">
        <WorkflowSelect value={filters.workflow} onChange={(k) => set("workflow", k)} label="Workflow" empty="any" archived />
        <label>
          Status
          <select value={filters.status} onChange={(e) => set("status", e.target.value)} aria-label="Status">
            <option value="">any</option>
            {STATUSES.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </label>
        <label>
          Subject
          <input value={filters.subject} onChange={(e) => set("subject", e.target.value)} placeholder="exact subject" />
        </label>
        <label>
          Created after
          <input type="datetime-local" value={filters.after} onChange={(e) => set("after", e.target.value)} />
        </label>
        <label>
          Created before
          <input type="datetime-local" value={filters.before} onChange={(e) => set("before", e.target.value)} />
        </label>
        <label>
          Search the loaded list
          <input value={search} onChange={(e) => setSearch(e.target.value)} placeholder="id, subject, node" />
        </label>
      </div>
      <ErrorNote error={q.error} />
      {q.isPending ? (
        <Loading what="executions" />
      ) : shown.length === 0 ? (
        <Empty>No execution matches. Start one from a workflow's page, through `POST /v1/executions`, or by a trigger.</Empty>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Execution</th>
              <th>Workflow</th>
              <th>Status</th>
              <th>Subject</th>
              <th>At node</th>
              <th>Created</th>
              <th>Finished</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((e) => (
              <tr key={e.id}>
                <td>
                  <Link className="mono" to={`/executions/${e.id}`}>
                    {e.id}
                  </Link>
                </td>
                <td>
                  {names.get(e.workflow_id) ?? e.workflow_id} <span className="muted">v{e.version}</span>
                </td>
                <td>
                  <Badge value={e.status} />
                </td>
                <td>{e.subject ?? "—"}</td>
                <td>{e.current_node ?? "—"}</td>
                <td>
                  <Time at={e.created_at} />
                </td>
                <td>
                  <Time at={e.finished_at} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {q.hasNextPage && (
        <p>
          <button onClick={() => q.fetchNextPage()} disabled={q.isFetchingNextPage}>
            {q.isFetchingNextPage ? "Loading…" : "Load more"}
          </button>
        </p>
      )}
    </div>
  );
}
