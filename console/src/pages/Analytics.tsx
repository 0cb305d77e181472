// A workflow's results: the funnel on its graph, a metric by day in a
// chosen zone, delivery rates per channel and provider, conversion per
// branch and against the holdout, and the CSV export.
import { useMemo, useState } from "react";
import { useNavigate, useParams } from "react-router";
import { useMutation, useQuery } from "@tanstack/react-query";
import { CartesianGrid, Line, LineChart, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import { client, fetchText, unwrap, type Schemas } from "../api/client";
import { useWorkflows } from "../api/hooks";
import { JourneyGraph } from "../components/JourneyGraph";
import { WorkflowSelect } from "../components/pickers";
import { Empty, ErrorNote, Query, percent } from "../components/ui";
import type { WfDoc } from "../lib/graph";
import { viewerZone } from "../lib/time";

import type { paths } from "../api/schema";

type Metric = paths["/v1/analytics/workflows/{workflow}/series"]["get"]["parameters"]["query"]["metric"];

const METRICS: Metric[] = ["entered", "completed", "failed", "converted", "sent", "delivered", "opened", "clicked", "bounced", "unsubscribed"];

/** `YYYY-MM-DD` of an instant's UTC day (what the reports count in). */
function day(d: Date): string {
  return d.toISOString().slice(0, 10);
}

export default function Analytics() {
  const { id } = useParams();
  const navigate = useNavigate();
  const workflows = useWorkflows(true);
  const today = new Date();
  const [from, setFrom] = useState(day(new Date(today.getTime() - 29 * 86_400_000)));
  const [to, setTo] = useState(day(today));
  const [zone, setZone] = useState(viewerZone());
  if (!id) {
    return (
      <div>
        <h1>Analytics</h1>
        <Query q={workflows} what="workflows">
          {(ws) =>
            ws.length === 0 ? (
              <Empty>No workflow yet: publish one and start executions, and their numbers appear here.</Empty>
            ) : (
              <div className="grid">
                {ws.map((w) => (
                  <button key={w.id} className="card" style={{ textAlign: "left" }} onClick={() => navigate(`/analytics/${encodeURIComponent(w.key)}`)}>
                    <b>{w.name || w.key}</b>
                    <div className="muted">{w.latest_version ? `v${w.latest_version}` : "not published"}</div>
                  </button>
                ))}
              </div>
            )
          }
        </Query>
      </div>
    );
  }
  return (
    <div>
      <div className="spread">
        <h1>Analytics: {id}</h1>
        <div className="filters" style={{ margin: 0 }}>
          <WorkflowSelect value={id} onChange={(k) => navigate(`/analytics/${encodeURIComponent(k)}`)} label="Analytics workflow" archived />
          <label>
            From
            <input type="date" value={from} onChange={(e) => setFrom(e.target.value)} aria-label="From" />
          </label>
          <label>
            To
            <input type="date" value={to} onChange={(e) => setTo(e.target.value)} aria-label="To" />
          </label>
          <label>
            Time zone (days of the chart)
            <input value={zone} onChange={(e) => setZone(e.target.value)} list="zones" aria-label="Time zone" />
            <datalist id="zones">
              {[viewerZone(), "UTC", ...Intl.supportedValuesOf("timeZone")].map((z, i) => (
                <option key={z + i} value={z} />
              ))}
            </datalist>
          </label>
          <Export workflow={id} from={from} to={to} />
        </div>
      </div>
      <p className="hint">
        Funnel, conversions, delivery rates and the export count UTC days ({from} to {to}); the chart counts days in its time zone.
      </p>
      <Journey key={id} workflow={id} from={from} to={to} zone={zone} />
      <div className="grid" style={{ gridTemplateColumns: "1fr 1fr", alignItems: "start", marginTop: 12 }}>
        <Conversions workflow={id} from={from} to={to} />
      </div>
      <Deliveries workflow={id} from={from} to={to} />
    </div>
  );
}

/** The funnel on the journey's graph (its latest version), and the chart. */
function Journey({ workflow, from, to, zone }: { workflow: string; from: string; to: string; zone: string }) {
  const funnel = useQuery({
    queryKey: ["funnel", workflow, from, to],
    queryFn: () => unwrap(client.GET("/v1/analytics/workflows/{workflow}/funnel", { params: { path: { workflow }, query: { from, to } } })),
    refetchInterval: 15_000,
  });
  const wf = useQuery({
    queryKey: ["workflow", workflow],
    queryFn: () => unwrap(client.GET("/v1/workflows/{workflow}", { params: { path: { workflow } } })),
  });
  const version = funnel.data?.version ?? wf.data?.latest_version ?? undefined;
  const doc = useQuery({
    queryKey: ["version", workflow, version],
    enabled: Boolean(version),
    queryFn: () => unwrap(client.GET("/v1/workflows/{workflow}/versions/{version}", { params: { path: { workflow, version: version! } } })),
    staleTime: Infinity,
  });
  const byNode = useMemo(() => new Map((funnel.data?.nodes ?? []).map((n) => [n.node, n])), [funnel.data]);
  const decorate = useMemo(
    () => (node: string) => {
      const n = byNode.get(node);
      if (!n) return { note: "0 entered" };
      const parts = [`${n.entered.toLocaleString()} entered`];
      const now = Object.values(n.now as Record<string, number>).reduce((a, b) => a + b, 0);
      if (now > 0) parts.push(`${now} here now`);
      if (n.action_failed) parts.push(`${n.action_failed} failed`);
      return { note: parts.join(" · "), visited: n.entered > 0 };
    },
    [byNode],
  );
  const edgeLabel = useMemo(
    () => (from: string, branch: string | null) => {
      const n = byNode.get(from);
      const count = n ? (n.branches as Record<string, number>)[branch ?? "next"] : undefined;
      return `${branch ?? ""}${count !== undefined ? ` ${count.toLocaleString()}` : ""}`.trim() || undefined;
    },
    [byNode],
  );
  return (
    <section>
      <Query q={funnel} what="the funnel">
        {(f) => (
          <div>
            <div className="grid" aria-label="Funnel totals">
              {(
                [
                  ["entered", f.entered],
                  ["completed", f.completed],
                  ["failed", f.failed],
                  ["cancelled", f.cancelled],
                  ["held out", f.held_out],
                ] as const
              ).map(([l, n]) => (
                <div className="card stat" key={l}>
                  <div className="n">{n.toLocaleString()}</div>
                  <div className="l">{l}</div>
                </div>
              ))}
            </div>
            {f.entered === 0 && <p className="muted">Nothing counted in this range yet (the rollup counts every few seconds).</p>}
          </div>
        )}
      </Query>
      {doc.data && (
        <div style={{ marginTop: 12 }} data-testid="funnel-graph">
          <p className="hint">Version {version}: entries per node, and per exit on the arrows.</p>
          <JourneyGraph doc={doc.data.definition as WfDoc} decorate={decorate} edgeLabel={edgeLabel} height={420} />
        </div>
      )}
      <div style={{ marginTop: 12 }}>
        <SeriesChart workflow={workflow} from={from} to={to} zone={zone} doc={doc.data?.definition as WfDoc | undefined} />
      </div>
    </section>
  );
}

/** Metrics counted per node: "the journey" means its start node for these. */
const PER_NODE = new Set<Metric>(["entered", "branch", "action_failed", "skipped"]);

function SeriesChart({ workflow, from, to, zone, doc }: { workflow: string; from: string; to: string; zone: string; doc?: WfDoc }) {
  const [metric, setMetric] = useState<Metric>("entered");
  const [node, setNode] = useState("");
  const start = doc?.nodes.find((n) => n.type === "start")?.id;
  const nodeFilter = node || (PER_NODE.has(metric) ? start : undefined);
  const q = useQuery({
    queryKey: ["series", workflow, metric, nodeFilter, from, to, zone],
    queryFn: () =>
      unwrap(
        client.GET("/v1/analytics/workflows/{workflow}/series", {
          params: { path: { workflow }, query: { metric, node: nodeFilter, from, to, timezone: zone } },
        }),
      ),
  });
  return (
    <section className="card">
      <div className="spread">
        <h2 style={{ margin: 0 }}>By day</h2>
        <div className="row">
          <select value={metric} onChange={(e) => setMetric(e.target.value as Metric)} aria-label="Metric">
            {METRICS.map((m) => (
              <option key={m}>{m}</option>
            ))}
          </select>
          <select value={node} onChange={(e) => setNode(e.target.value)} aria-label="Node">
            <option value="">the journey</option>
            {(doc?.nodes ?? []).map((n) => (
              <option key={n.id} value={n.id}>
                node {n.id}
              </option>
            ))}
          </select>
        </div>
      </div>
      <Query q={q} what="the series">
        {(s) => (
          <div style={{ height: 240 }}>
            <p className="hint">Days in {s.timezone}.</p>
            <ResponsiveContainer width="100%" height={200}>
              <LineChart data={s.days}>
                <CartesianGrid strokeDasharray="3 3" />
                <XAxis dataKey="day" fontSize={11} />
                <YAxis allowDecimals={false} fontSize={11} />
                <Tooltip />
                <Line type="monotone" dataKey="value" name={metric} stroke="#3559e0" dot={false} isAnimationActive={false} />
              </LineChart>
            </ResponsiveContainer>
          </div>
        )}
      </Query>
    </section>
  );
}

function Interval({ c }: { c: { rate?: number | null; low?: number | null; high?: number | null } }) {
  return (
    <span>
      {percent(c.rate)}{" "}
      {c.low !== null && c.low !== undefined && (
        <span className="muted">
          ({percent(c.low)} – {percent(c.high)})
        </span>
      )}
    </span>
  );
}

function Conversions({ workflow, from, to }: { workflow: string; from: string; to: string }) {
  const q = useQuery({
    queryKey: ["conversions", workflow, from, to],
    queryFn: () => unwrap(client.GET("/v1/analytics/workflows/{workflow}/conversions", { params: { path: { workflow }, query: { from, to } } })),
  });
  return (
    <section className="card">
      <h2 style={{ marginTop: 0 }}>Conversion</h2>
      <Query q={q} what="conversions">
        {(c: Schemas["Conversions"]) =>
          !c.goal ? (
            <Empty>No goal: set settings.goal (an event and a window) in the workflow to count conversions.</Empty>
          ) : (
            <div>
              <p>
                Goal: <code>{c.goal.event}</code> within {c.goal.within}
                {c.holdout_percent ? ` · ${c.holdout_percent} % held out` : ""}
              </p>
              <table>
                <thead>
                  <tr>
                    <th>Group</th>
                    <th>Entered</th>
                    <th>Converted</th>
                    <th>Rate (95 % interval)</th>
                  </tr>
                </thead>
                <tbody>
                  <tr>
                    <td>journey</td>
                    <td>{c.journey.entered}</td>
                    <td>{c.journey.converted}</td>
                    <td>
                      <Interval c={c.journey} />
                    </td>
                  </tr>
                  {c.holdout && (
                    <tr>
                      <td>holdout</td>
                      <td>{c.holdout.entered}</td>
                      <td>{c.holdout.converted}</td>
                      <td>
                        <Interval c={c.holdout} />
                      </td>
                    </tr>
                  )}
                  {c.branches.map((b) => (
                    <tr key={b.node + "/" + b.branch}>
                      <td>
                        {b.node} → {b.branch}
                      </td>
                      <td>{b.entered}</td>
                      <td>{b.converted}</td>
                      <td>
                        <Interval c={b} />
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
              {c.lift !== null && c.lift !== undefined && (
                <p>
                  Lift over the holdout: {c.lift >= 0 ? "+" : ""}
                  {(c.lift * 100).toFixed(1)} percentage points
                </p>
              )}
            </div>
          )
        }
      </Query>
    </section>
  );
}

function Deliveries({ workflow, from, to }: { workflow: string; from: string; to: string }) {
  const q = useQuery({
    queryKey: ["rates", workflow, from, to],
    queryFn: () => unwrap(client.GET("/v1/analytics/deliveries", { params: { query: { workflow, from, to } } })),
  });
  return (
    <section>
      <h2>Delivery rates</h2>
      <Query q={q} what="delivery rates">
        {(r) =>
          r.providers.length === 0 ? (
            <Empty>No message of this workflow in this range.</Empty>
          ) : (
            <table>
              <thead>
                <tr>
                  <th>Channel</th>
                  <th>Provider</th>
                  <th>Sent</th>
                  <th>Delivered</th>
                  <th>Opened</th>
                  <th>Clicked</th>
                  <th>Bounced</th>
                  <th>Failed</th>
                  <th>Unsubscribed</th>
                </tr>
              </thead>
              <tbody>
                {[...r.channels.map((c) => ({ ...c, provider: "all" })), ...r.providers].map((p) => (
                  <tr key={p.channel + "/" + p.provider}>
                    <td>{p.channel}</td>
                    <td>{p.provider}</td>
                    <td>{p.sent}</td>
                    <td>
                      {p.delivered} <span className="muted">{percent(p.delivery_rate)}</span>
                    </td>
                    <td>
                      {p.opened} <span className="muted">{percent(p.open_rate)}</span>
                    </td>
                    <td>
                      {p.clicked} <span className="muted">{percent(p.click_rate)}</span>
                    </td>
                    <td>
                      {p.bounced} <span className="muted">{percent(p.bounce_rate)}</span>
                    </td>
                    <td>
                      {p.send_failed} <span className="muted">{percent(p.failure_rate)}</span>
                    </td>
                    <td>
                      {p.unsubscribed} <span className="muted">{percent(p.unsubscribe_rate)}</span>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          )
        }
      </Query>
    </section>
  );
}

function Export({ workflow, from, to }: { workflow: string; from: string; to: string }) {
  const download = useMutation({
    mutationFn: async () => {
      const csv = await fetchText(`/v1/analytics/workflows/${encodeURIComponent(workflow)}/export?from=${from}&to=${to}`);
      const url = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
      const a = document.createElement("a");
      a.href = url;
      a.download = `${workflow}-${from}-${to}.csv`;
      a.click();
      URL.revokeObjectURL(url);
    },
  });
  return (
    <div>
      <button onClick={() => download.mutate()} disabled={download.isPending}>
        {download.isPending ? "Exporting…" : "Export CSV"}
      </button>
      <ErrorNote error={download.error} />
    </div>
  );
}
