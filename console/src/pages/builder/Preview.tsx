// "Preview and test": the journey on the simulator with an input and
// scripted events; its timeline here, its path on the canvas.
import { useState } from "react";
import { useMutation } from "@tanstack/react-query";
import { ApiProblem, client, unwrap, type Schemas } from "../../api/client";
import type { WfDoc } from "../../lib/graph";
import { formatOffset, formatTime } from "../../lib/time";
import { Badge, ErrorNote } from "../../components/ui";
import { ProblemList } from "../../components/pickers";

export type PreviewResult = Schemas["SimulationOut"];

function parse(field: string, text: string, fallback: unknown): unknown {
  if (!text.trim()) return fallback;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ApiProblem(400, "invalid_request", `${field}: not valid JSON (${(e as Error).message})`, field);
  }
}

export function Preview({
  workflow,
  doc,
  result,
  onResult,
}: {
  workflow: string;
  doc: WfDoc;
  result: PreviewResult | null;
  onResult: (r: PreviewResult | null) => void;
}) {
  const [input, setInput] = useState("{}");
  const [events, setEvents] = useState("[]");
  const run = useMutation({
    mutationFn: async () => {
      const body = {
        definition: doc,
        input: parse("input", input, {}) as Record<string, unknown>,
        events: parse("events", events, []) as Schemas["ScriptedEvent"][],
      };
      return unwrap(client.POST("/v1/workflows/{workflow}/simulate", { params: { path: { workflow } }, body }));
    },
    onSuccess: onResult,
    onError: () => onResult(null),
  });
  const details = run.error instanceof ApiProblem && Array.isArray(run.error.details) ? (run.error.details as { node?: string; field: string; message: string }[]) : [];
  return (
    <section className="card" aria-label="Preview">
      <h3 style={{ marginTop: 0 }}>Preview</h3>
      <p className="hint">Runs the draft on a virtual clock: delays take no time and nothing is sent.</p>
      <label>
        Input (JSON)
        <textarea rows={3} value={input} onChange={(e) => setInput(e.target.value)} aria-label="Preview input" />
      </label>
      <label>
        Events (JSON: [{"{"}"after": "2h", "name": "order_completed", "payload": {"{}"}{"}"}])
        <textarea rows={2} value={events} onChange={(e) => setEvents(e.target.value)} aria-label="Preview events" />
      </label>
      <div className="row" style={{ marginTop: 6 }}>
        <button className="primary" onClick={() => run.mutate()} disabled={run.isPending}>
          {run.isPending ? "Running…" : "Run preview"}
        </button>
        {result && (
          <button onClick={() => onResult(null)} className="link">
            clear
          </button>
        )}
      </div>
      <ErrorNote error={run.error} />
      <ProblemList problems={details} />
      {result && (
        <div data-testid="preview-result">
          <p>
            <Badge value={result.status} /> {result.outcome && <>outcome <b>{result.outcome}</b></>} ·{" "}
            {result.stop === "finished" ? "finished" : result.stop.replace(/_/g, " ")} · {result.dispatches.length} message(s)/call(s)
          </p>
          <ol className="timeline" aria-label="Preview timeline">
            {result.steps
              .filter((s) => s.type !== "input_received" || (s.entry as { input?: { type?: string } }).input?.type === "event")
              .map((s, i) => (
                <li key={i}>
                  <span className="at" title={formatTime(s.at)}>
                    {formatOffset(s.offset_ms)}
                  </span>
                  <span>{s.text}</span>
                </li>
              ))}
          </ol>
          {result.dispatches.length > 0 && (
            <>
              <h3>Would send</h3>
              {result.dispatches.map((d, i) => (
                <details key={i}>
                  <summary>
                    {d.action} from <b>{d.node}</b> (attempt {d.attempt})
                  </summary>
                  <pre>{JSON.stringify(d.inputs, null, 2)}</pre>
                </details>
              ))}
            </>
          )}
        </div>
      )}
    </section>
  );
}
