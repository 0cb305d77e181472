// Publishing: the draft as the server would store it against the latest
// version, line by line, then a new immutable version (or the answer that
// nothing changed).
import { useMemo } from "react";
import { useMutation, useQuery } from "@tanstack/react-query";
import { diffLines } from "diff";
import { ApiProblem, client, unwrap, type Schemas } from "../../api/client";
import { stableJson, withAside, withoutLayout, type Aside, type WfDoc } from "../../lib/graph";
import { ProblemList } from "../../components/pickers";
import { ErrorNote, Loading } from "../../components/ui";
import { Modal } from "../../components/Modal";

export function PublishDialog({
  workflow,
  scope,
  aside,
  doc: shown,
  latest,
  onClose,
  onPublished,
}: {
  workflow: string;
  /** The mutation scope of the draft's saves: publishing waits for them. */
  scope: string;
  /** What of the stored draft the builder could not draw (sent with it). */
  aside: Aside;
  doc: WfDoc;
  latest: number | null;
  onClose: () => void;
  onPublished: (w: Schemas["WorkflowOut"], published: WfDoc) => void;
}) {
  const doc = useMemo(() => withAside(shown, aside), [shown, aside]);
  const previous = useQuery({
    queryKey: ["version", workflow, latest],
    enabled: latest !== null,
    queryFn: () => unwrap(client.GET("/v1/workflows/{workflow}/versions/{version}", { params: { path: { workflow, version: latest! } } })),
    staleTime: Infinity,
  });
  // The draft as publishing would store it (defaults written out), so the
  // diff shows what changes, not how it is spelled. The builder asked the
  // same question of a settled draft: usually answered already.
  const normalized = useQuery({
    queryKey: ["validate", workflow, doc],
    queryFn: () => unwrap(client.POST("/v1/workflows/{workflow}/validate", { params: { path: { workflow } }, body: { definition: doc } })),
    staleTime: Infinity,
  });
  const diff = useMemo(() => {
    if (!normalized.data?.normalized) return null;
    const before = latest === null ? "" : previous.data ? stableJson(withoutLayout(previous.data.definition as WfDoc)) : null;
    if (before === null) return null;
    return diffLines(before, stableJson(withoutLayout(normalized.data.normalized as WfDoc)));
  }, [latest, previous.data, normalized.data]);
  const publish = useMutation({
    scope: { id: scope },
    // One request: the draft saved and published together, after the
    // saves before it (same scope).
    mutationFn: () => unwrap(client.PUT("/v1/workflows/{workflow}", { params: { path: { workflow } }, body: { definition: doc, publish: true } })),
    onSuccess: (w) => onPublished(w, shown),
  });
  const changed = diff?.some((p) => p.added || p.removed) ?? true;
  // Publishing compares whole documents, positions included.
  const moved =
    !changed &&
    previous.data !== undefined &&
    normalized.data?.normalized !== undefined &&
    stableJson(previous.data.definition) !== stableJson(normalized.data.normalized);
  const problems =
    publish.error instanceof ApiProblem && Array.isArray(publish.error.details)
      ? (publish.error.details as { node?: string; field: string; message: string }[])
      : ((normalized.data?.errors ?? []) as { node?: string | null; field: string; message: string }[]);
  const done = publish.data?.published;
  return (
    <Modal label="Publish" onClose={onClose}>
      <h2 style={{ marginTop: 0 }}>{latest === null ? "Publish version 1" : `Publish over version ${latest}`}</h2>
      {done ? (
        <div role="status">
          <p>
            {done.new ? (
              <>
                Published <b>version {done.version}</b>. New executions run it; running ones keep theirs.
              </>
            ) : (
              <>Nothing changed: version {done.version} is the latest.</>
            )}
          </p>
          <button className="primary" onClick={onClose}>
            Close
          </button>
        </div>
      ) : (
        <>
          {(normalized.isPending || (latest !== null && previous.isPending)) && <Loading what="the changes" />}
          <ErrorNote error={previous.error ?? normalized.error} />
          {diff && latest !== null && (
            <>
              <p className="muted">Changes since version {latest} (positions on the canvas left out):</p>
              <pre className="diff" data-testid="publish-diff">
                {diff.map((part, i) => (
                  <span key={i} className={part.added ? "add" : part.removed ? "del" : ""}>
                    {part.added || part.removed
                      ? part.value
                          .replace(/\n$/, "")
                          .split("\n")
                          .map((l) => (part.added ? "+ " : "- ") + l)
                          .join("\n") + "\n"
                      : part.value.split("\n").length > 6
                        ? "  …\n"
                        : part.value.replace(/^/gm, "  ")}
                  </span>
                ))}
              </pre>
            </>
          )}
          {latest === null && <p>This is the first version. Executions can start once it is published.</p>}
          {diff && !changed && !moved && <p className="muted">The draft equals version {latest}: publishing makes no new version.</p>}
          {moved && <p className="muted">Only positions on the canvas changed: publishing makes a version with the new layout.</p>}
          <ErrorNote error={publish.error} />
          <ProblemList problems={problems} />
          <div className="row">
            <button className="primary" onClick={() => publish.mutate()} disabled={publish.isPending}>
              {publish.isPending ? "Publishing…" : "Publish"}
            </button>
            <button onClick={onClose}>Cancel</button>
          </div>
        </>
      )}
    </Modal>
  );
}
