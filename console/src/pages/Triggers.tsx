import { useState } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { client, unwrap, type Schemas } from "../api/client";
import { useWorkflowNames } from "../api/hooks";
import { WorkflowSelect } from "../components/pickers";
import { Badge, Empty, ErrorNote, Query, Time } from "../components/ui";

type Trigger = Schemas["TriggerOut"];
type Kind = Schemas["TriggerKind"];

const EXAMPLES: Record<Kind, string> = {
  api: "{}",
  schedule: '{"cron": "0 0 9 * * Mon-Fri", "timezone": "Europe/Paris", "input": {}}',
  event: '{"event": "signed_up", "input": {"source": "signup"}}',
  segment: '{"segment": "vip"}',
};

/** The moves a trigger's state allows, as the API names them. */
const MOVES: Record<string, ("activate" | "pause" | "resume" | "stop")[]> = {
  init: ["activate", "stop"],
  active: ["pause", "stop"],
  paused: ["resume", "stop"],
  stopped: [],
};

export function Triggers() {
  const names = useWorkflowNames();
  const triggers = useQuery({
    queryKey: ["triggers"],
    queryFn: () => unwrap(client.GET("/v1/triggers", { params: { query: {} } })),
    refetchInterval: 10_000,
  });
  const [open, setOpen] = useState<string | null>(null);
  return (
    <div>
      <h1>Triggers</h1>
      <CreateTrigger />
      <Query q={triggers} what="triggers">
        {(ts) =>
          ts.length === 0 ? (
            <Empty>No trigger yet. Create one above: an API path, a schedule, an event or a segment entry starts the workflow.</Empty>
          ) : (
            <table>
              <thead>
                <tr>
                  <th>Trigger</th>
                  <th>Workflow</th>
                  <th>Kind</th>
                  <th>State</th>
                  <th>Fires</th>
                  <th>Last fired</th>
                  <th></th>
                </tr>
              </thead>
              <tbody>
                {ts.map((t) => (
                  <TriggerRow key={t.id} t={t} workflow={names.get(t.workflow_id) ?? t.workflow_id} open={open === t.id} onToggle={() => setOpen(open === t.id ? null : t.id)} />
                ))}
              </tbody>
            </table>
          )
        }
      </Query>
    </div>
  );
}

function TriggerRow({ t, workflow, open, onToggle }: { t: Trigger; workflow: string; open: boolean; onToggle: () => void }) {
  const queries = useQueryClient();
  const move = useMutation({
    mutationFn: (m: "activate" | "pause" | "resume" | "stop" | "delete") =>
      m === "delete"
        ? unwrap(client.DELETE("/v1/triggers/{trigger}", { params: { path: { trigger: t.id } } }))
        : unwrap(client.POST(`/v1/triggers/{trigger}/${m}`, { params: { path: { trigger: t.id } } })),
    onSuccess: () => queries.invalidateQueries({ queryKey: ["triggers"] }),
  });
  const config = (t.config ?? {}) as Record<string, unknown>;
  return (
    <>
      <tr data-trigger={t.id}>
        <td>
          <button className="link mono" onClick={onToggle} aria-expanded={open}>
            {t.id}
          </button>
        </td>
        <td>{workflow}</td>
        <td>{t.kind}</td>
        <td>
          <Badge value={t.state} />
        </td>
        <td>
          {t.kind === "api" && t.path && <code>POST /trigger/{t.path}</code>}
          {t.kind === "schedule" && (
            <div>
              <code>{String(config.cron ?? "")}</code> {config.timezone ? <span className="muted">{String(config.timezone)}</span> : null}
              {t.next_fires.length > 0 && (
                <ul className="muted" style={{ margin: "4px 0 0", paddingLeft: 16 }}>
                  {t.next_fires.slice(0, 3).map((f) => (
                    <li key={f}>
                      <Time at={f} />
                    </li>
                  ))}
                </ul>
              )}
            </div>
          )}
          {t.kind === "event" && (
            <span>
              event <code>{String(config.event ?? "")}</code>
              {config.topic ? (
                <>
                  {" "}
                  from topic <code>{String(config.topic)}</code> {(t.state === "active" || t.state === "paused") && <Lag id={t.id} />}
                </>
              ) : null}
            </span>
          )}
          {t.kind === "segment" && <code>{String(config.segment ?? "")}</code>}
        </td>
        <td>
          <Time at={t.last_fired_at} />
        </td>
        <td className="row">
          {t.state === "stopped" && (
            <button className="danger" onClick={() => move.mutate("delete")} disabled={move.isPending} title="Gone from the list; its API path is free again">
              Delete
            </button>
          )}
          {(MOVES[t.state] ?? []).map((m) => (
            <button key={m} onClick={() => move.mutate(m)} disabled={move.isPending} className={m === "stop" ? "danger" : ""}>
              {m[0].toUpperCase() + m.slice(1)}
            </button>
          ))}
        </td>
      </tr>
      {(open || move.error) && (
        <tr>
          <td colSpan={7}>
            <ErrorNote error={move.error} />
            {open && (
              <>
                <pre>{JSON.stringify(t.config, null, 2)}</pre>
                {t.kind === "event" && Boolean(config.topic) && (
                  <>
                    <Lag id={t.id} detail />
                    <DeadLetters id={t.id} />
                  </>
                )}
              </>
            )}
          </td>
        </tr>
      )}
    </>
  );
}

/** How far an event trigger is behind on its topic (total, or per partition). */
function Lag({ id, detail = false }: { id: string; detail?: boolean }) {
  const q = useQuery({
    queryKey: ["lag", id],
    queryFn: () => unwrap(client.GET("/v1/triggers/{trigger}/lag", { params: { path: { trigger: id } } })),
    refetchInterval: 30_000,
  });
  if (q.error) return detail ? <ErrorNote error={q.error} /> : <span className="error">lag unknown</span>;
  if (!q.data) return null;
  if (!q.data.kafka) return detail ? <p className="muted">No Kafka on this node: the in-process queue keeps no offsets, so no lag to show.</p> : null;
  if (!q.data.topic_exists) return detail ? <p className="muted">The topic does not exist yet.</p> : <Badge value="no topic yet" kind="warn" />;
  if (!detail) {
    if (q.data.total === undefined || q.data.total === null) return <Badge value="nothing read yet" />;
    return <Badge value={`lag ${q.data.total}`} kind={q.data.total > 0 ? "warn" : "ok"} />;
  }
  return (
    <table aria-label="Lag per partition" style={{ marginBottom: 8 }}>
      <thead>
        <tr>
          <th>Partition</th>
          <th>Committed</th>
          <th>End</th>
          <th>Lag</th>
        </tr>
      </thead>
      <tbody>
        {q.data.partitions.map((p) => (
          <tr key={p.partition}>
            <td>{p.partition}</td>
            <td>{p.committed ?? "nothing yet"}</td>
            <td>{p.end}</td>
            <td>{p.lag ?? "—"}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function DeadLetters({ id }: { id: string }) {
  const q = useQuery({
    queryKey: ["dead-letters", id],
    queryFn: () => unwrap(client.GET("/v1/triggers/{trigger}/dead-letters", { params: { path: { trigger: id }, query: { limit: 50 } } })),
  });
  return (
    <Query q={q} what="dead letters">
      {(ds) =>
        ds.length === 0 ? (
          <p className="muted">No dead letters: every message of the topic was used.</p>
        ) : (
          <table>
            <thead>
              <tr>
                <th>At</th>
                <th>Partition / offset</th>
                <th>Reason</th>
                <th>Payload</th>
              </tr>
            </thead>
            <tbody>
              {ds.map((d) => (
                <tr key={d.id}>
                  <td>
                    <Time at={d.created_at} />
                  </td>
                  <td>
                    {d.partition} / {d.offset}
                  </td>
                  <td>{d.reason}</td>
                  <td>
                    <code>{d.payload}</code>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )
      }
    </Query>
  );
}

function CreateTrigger() {
  const queries = useQueryClient();
  const [workflow, setWorkflow] = useState("");
  const [kind, setKind] = useState<Kind>("api");
  const [path, setPath] = useState("");
  const [config, setConfig] = useState(EXAMPLES.api);
  const [configError, setConfigError] = useState<string | null>(null);
  const create = useMutation({
    mutationFn: (parsed: unknown) =>
      unwrap(
        client.POST("/v1/workflows/{workflow}/triggers", {
          params: { path: { workflow } },
          body: { kind, path: kind === "api" ? path || null : null, config: parsed },
        }),
      ),
    onSuccess: () => queries.invalidateQueries({ queryKey: ["triggers"] }),
  });
  return (
    <form
      className="card"
      style={{ marginBottom: 12 }}
      onSubmit={(e) => {
        e.preventDefault();
        let parsed: unknown;
        try {
          parsed = JSON.parse(config || "{}");
          setConfigError(null);
        } catch (err) {
          setConfigError(`config: not valid JSON (${(err as Error).message})`);
          return;
        }
        create.mutate(parsed);
      }}
    >
      <div className="filters" style={{ marginBottom: 0 }}>
        <WorkflowSelect value={workflow} onChange={setWorkflow} label="Trigger workflow" empty="choose…" required />
        <label>
          Kind
          <select
            value={kind}
            onChange={(e) => {
              const k = e.target.value as Kind;
              setKind(k);
              setConfig(EXAMPLES[k]);
            }}
            aria-label="Trigger kind"
          >
            <option value="api">api</option>
            <option value="schedule">schedule</option>
            <option value="event">event</option>
            <option value="segment">segment</option>
          </select>
        </label>
        {kind === "api" && (
          <label>
            Path under /trigger/
            <input value={path} onChange={(e) => setPath(e.target.value)} placeholder="signups/new" aria-label="Trigger path" />
          </label>
        )}
        <label style={{ flex: 1, minWidth: 280 }}>
          Configuration (JSON)
          <input value={config} onChange={(e) => setConfig(e.target.value)} className="mono" aria-label="Trigger configuration" />
        </label>
        <button className="primary" disabled={!workflow || create.isPending}>
          Create trigger
        </button>
      </div>
      {configError && <div className="alert">{configError}</div>}
      <ErrorNote error={create.error} />
    </form>
  );
}
