// Publishing: the draft against the latest version, line by line, then a
// new immutable version (or the answer that nothing changed).
import { useMemo } from "react";
import { useMutation, useQuery } from "@tanstack/react-query";
import { diffLines } from "diff";
import { ApiProblem, client, unwrap } from "../../api/client";
import { stableJson, withoutLayout, type WfDoc } from "../../lib/graph";
import { ErrorNote, Loading } from "../../components/ui";

export function PublishDialog({
  workflow,
  doc,
  latest,
  onClose,
  onPublished,
}: {
  workflow: string;
  doc: WfDoc;
  latest: number | null;
  onClose: () => void;
  onPublished: () => void;
}) {
  const previous = useQuery({
    queryKey: ["version", workflow, latest],
    enabled: latest !== null,
    queryFn: () => unwrap(client.GET("/v1/workflows/{workflow}/versions/{version}", { params: { path: { workflow, version: latest! } } })),
    staleTime: Infinity,
  });
  const diff = useMemo(() => {
    const before = latest === null ? "" : previous.data ? stableJson(withoutLayout(previous.data.definition as WfDoc)) : null;
    if (before === null) return null;
    // The stored version carries the key; the draft may not.
    const after = stableJson(withoutLayout({ ...doc, key: (previous.data?.definition as WfDoc | undefined)?.key ?? doc.key }));
    return diffLines(before, after);
  }, [doc, latest, previous.data]);
  const publish = useMutation({
    mutationFn: async () => {
      // Publish what is on screen: save it as the draft first.
      await unwrap(client.PUT("/v1/workflows/{workflow}", { params: { path: { workflow } }, body: { definition: doc } }));
      return unwrap(client.POST("/v1/workflows/{workflow}/publish", { params: { path: { workflow } } }));
    },
    onSuccess: onPublished,
  });
  const changed = diff?.some((p) => p.added || p.removed) ?? true;
  const problems = publish.error instanceof ApiProblem && Array.isArray(publish.error.details) ? (publish.error.details as { node?: string; field: string; message: string }[]) : [];
  return (
    <div className="modal-back" onClick={onClose}>
      <div className="modal" role="dialog" aria-label="Publish" onClick={(e) => e.stopPropagation()}>
        <h2 style={{ marginTop: 0 }}>{latest === null ? "Publish version 1" : `Publish over version ${latest}`}</h2>
        {publish.data ? (
          <div role="status">
            <p>
              {publish.data.new ? (
                <>
                  Published <b>version {publish.data.version}</b>. New executions run it; running ones keep theirs.
                </>
              ) : (
                <>Nothing changed: version {publish.data.version} is the latest.</>
              )}
            </p>
            <button className="primary" onClick={onClose}>
              Close
            </button>
          </div>
        ) : (
          <>
            {latest !== null && previous.isPending && <Loading what={`version ${latest}`} />}
            <ErrorNote error={previous.error} />
            {diff && (
              <>
                <p className="muted">Changes since version {latest ?? "—"} (positions on the canvas left out):</p>
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
            {!changed && <p className="muted">The draft equals version {latest}: publishing makes no new version.</p>}
            <ErrorNote error={publish.error} />
            {problems.length > 0 && (
              <ul className="error">
                {problems.map((p) => (
                  <li key={(p.node ?? "") + p.field + p.message}>
                    {p.node ? `${p.node}: ` : ""}
                    {p.field ? `${p.field}: ` : ""}
                    {p.message}
                  </li>
                ))}
              </ul>
            )}
            <div className="row">
              <button className="primary" onClick={() => publish.mutate()} disabled={publish.isPending}>
                {publish.isPending ? "Publishing…" : "Publish"}
              </button>
              <button onClick={onClose}>Cancel</button>
            </div>
          </>
        )}
      </div>
    </div>
  );
}
