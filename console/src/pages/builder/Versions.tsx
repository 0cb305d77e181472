import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useMutation } from "@tanstack/react-query";
import { useCallback, useState } from "react";
import { Modal } from "../../components/Modal";
import { client, unwrap } from "../../api/client";
import { ErrorNote, Time } from "../../components/ui";

/** The published versions; any of them can be loaded back into the draft. */
export function Versions({ workflow, onRestore }: { workflow: string; onRestore: (definition: unknown) => void }) {
  const q = useQuery({
    queryKey: ["versions", workflow],
    queryFn: () => unwrap(client.GET("/v1/workflows/{workflow}/versions", { params: { path: { workflow } } })),
  });
  const load = useMutation({
    mutationFn: (version: number) => unwrap(client.GET("/v1/workflows/{workflow}/versions/{version}", { params: { path: { workflow, version } } })),
    onSuccess: (v) => onRestore(v.definition),
  });
  return (
    <section className="card" aria-label="Versions">
      <h3 style={{ marginTop: 0 }}>Versions</h3>
      <ErrorNote error={q.error ?? load.error} />
      {q.data && q.data.length === 0 && <p className="muted">Not published yet.</p>}
      <ul style={{ paddingLeft: 16, margin: 0 }}>
        {(q.data ?? [])
          .slice()
          .reverse()
          .map((v) => (
            <li key={v.version}>
              v{v.version} <Time at={v.published_at} />{" "}
              <button className="link" onClick={() => load.mutate(v.version)} title="Load this version into the draft (undo takes it back)">
                load into draft
              </button>
            </li>
          ))}
      </ul>
    </section>
  );
}

/** Starts an execution of the latest version with an input. */
export function StartButton({ workflow, published, onStarted }: { workflow: string; published: boolean; onStarted: (id: string) => void }) {
  const [open, setOpen] = useState(false);
  const [input, setInput] = useState("{}");
  const [subject, setSubject] = useState("");
  const queries = useQueryClient();
  const close = useCallback(() => setOpen(false), []);
  const start = useMutation({
    mutationFn: async () => {
      let parsed: Record<string, unknown>;
      try {
        parsed = JSON.parse(input || "{}");
      } catch (e) {
        throw new Error(`input: not valid JSON (${(e as Error).message})`);
      }
      const r = (await unwrap(
        client.POST("/v1/executions", { params: { query: {} }, body: { workflow, input: parsed, subject: subject.trim() || null } }),
      )) as { id?: string };
      if (!r.id) throw new Error("Sojourn did not say which execution it started");
      return r.id;
    },
    onSuccess: (id) => {
      queries.invalidateQueries({ queryKey: ["executions"] });
      onStarted(id);
    },
  });
  if (!open) {
    return (
      <button onClick={() => setOpen(true)} disabled={!published} title={published ? "Start an execution of the latest version" : "Publish first"}>
        Start…
      </button>
    );
  }
  return (
    <Modal label="Start an execution" onClose={close}>
        <h2 style={{ marginTop: 0 }}>Start an execution of {workflow}</h2>
        <label>
          Input (JSON)
          <textarea rows={5} value={input} onChange={(e) => setInput(e.target.value)} aria-label="Execution input" />
        </label>
        <label>
          Subject (optional)
          <input value={subject} onChange={(e) => setSubject(e.target.value)} aria-label="Execution subject" />
        </label>
        <ErrorNote error={start.error} />
        <div className="row" style={{ marginTop: 8 }}>
          <button className="primary" onClick={() => start.mutate()} disabled={start.isPending}>
            {start.isPending ? "Starting…" : "Start"}
          </button>
          <button onClick={close}>Cancel</button>
        </div>
    </Modal>
  );
}
