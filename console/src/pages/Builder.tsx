// The builder: a palette from the registry, the journey on a canvas, the
// selected node's properties, the server's validation as you edit, undo and
// redo, a preview on the simulator, publishing with a diff, the versions.
import { useCallback, useEffect, useMemo, useReducer, useRef, useState } from "react";
import { useNavigate, useParams } from "react-router";
import { useMutation, useQuery, useQueryClient, type QueryClient } from "@tanstack/react-query";
import {
  Background,
  Controls,
  MiniMap,
  ReactFlow,
  ReactFlowProvider,
  applyNodeChanges,
  useReactFlow,
  type Connection,
  type Edge,
  type EdgeChange,
  type NodeChange,
} from "@xyflow/react";
import type { ErrorSchema, RJSFSchema } from "@rjsf/utils";
import { client, unwrap, type Schemas } from "../api/client";
import { useRegistry, useWorkflowSchema } from "../api/hooks";
import {
  NODE_TITLES,
  NODE_TYPES,
  addNode,
  branchesOf,
  connect,
  defaultConfig,
  edgeKey,
  formErrors,
  freshId,
  historyOf,
  layout,
  moveNodes,
  orphanEdges,
  problemsByPlace,
  readDraft,
  record,
  redo,
  removeEdges,
  removeNodes,
  undo,
  updateNode,
  withAside,
  type Aside,
  type History,
  type Problem,
  type WfDoc,
  type WfNode,
} from "../lib/graph";
import { nodeTypes, type JourneyFlowNode } from "../components/JourneyNode";
import { SchemaForm } from "../components/SchemaForm";
import { Badge, ErrorNote, Loading } from "../components/ui";
import { Preview, type PreviewResult } from "./builder/Preview";
import { PublishDialog } from "./builder/PublishDialog";
import { StartButton, Versions } from "./builder/Versions";
import { formatOffset } from "../lib/time";

type Action =
  | { kind: "edit"; doc: WfDoc }
  // The form's own fill-in of schema defaults: no undo step of its own.
  | { kind: "amend"; doc: WfDoc }
  | { kind: "undo" }
  | { kind: "redo" }
  | { kind: "reset"; doc: WfDoc };

function reducer(h: History, a: Action): History {
  switch (a.kind) {
    case "edit":
      return record(h, a.doc);
    case "amend":
      return { ...h, present: a.doc };
    case "undo":
      return undo(h);
    case "redo":
      return redo(h);
    case "reset":
      return historyOf(a.doc);
  }
}

/** Gives every node a position, so the canvas and the document agree. */
function placed(doc: WfDoc): WfDoc {
  if (doc.nodes.every((n) => n.position)) return doc;
  return moveNodes(doc, layout(doc));
}

/** `value` once it has stopped changing for `ms`. */
function useSettled<T>(value: T, ms: number): T {
  const [settled, setSettled] = useState(value);
  useEffect(() => {
    const t = setTimeout(() => setSettled(value), ms);
    return () => clearTimeout(t);
  }, [value, ms]);
  return settled;
}

export default function BuilderPage() {
  const { id = "" } = useParams();
  // Read afresh each time the builder opens (another tab, the API or the
  // CLI may have changed the draft); kept up to date by its own saves.
  const queries = useQueryClient();
  const wf = useQuery({
    queryKey: ["workflow", id],
    queryFn: async () => {
      // After the saves of a builder just left, so the draft read is theirs.
      await settledScope(queries, draftScope(id));
      return unwrap(client.GET("/v1/workflows/{workflow}", { params: { path: { workflow: id } } }));
    },
    staleTime: Infinity,
    gcTime: 0,
    refetchOnMount: "always",
    refetchOnWindowFocus: false,
  });
  if (wf.error) return <ErrorNote error={wf.error} />;
  if (!wf.data || wf.isFetchedAfterMount === false) return <Loading what="the workflow" />;
  return (
    <ReactFlowProvider>
      <Builder key={wf.data.id} workflow={wf.data} queryKey={["workflow", id]} />
    </ReactFlowProvider>
  );
}

/**
 * The canvas's edge ids, from each edge's identity (its node, exit and
 * target), so a selection follows its edge when others are removed; a
 * repeated edge (a draft written elsewhere) gets a suffix.
 */
function edgeIdsOf(doc: WfDoc): { ids: string[]; index: Map<string, number> } {
  const ids: string[] = [];
  const index = new Map<string, number>();
  doc.edges.forEach((e, i) => {
    let id = edgeKey(e);
    for (let n = 2; index.has(id); n++) id = `${edgeKey(e)}#${n}`;
    ids.push(id);
    index.set(id, i);
  });
  return { ids, index };
}

/** The mutation scope of a workflow's draft saves (and its publish). */
function draftScope(key: string): string {
  return `draft:${key}`;
}

/** Resolves once no mutation of `scope` is pending. */
function settledScope(queries: QueryClient, scope: string): Promise<void> {
  const cache = queries.getMutationCache();
  const pending = () => cache.findAll({ predicate: (m) => m.options.scope?.id === scope && m.state.status === "pending" }).length > 0;
  if (!pending()) return Promise.resolve();
  return new Promise((resolve) => {
    const stop = cache.subscribe(() => {
      if (!pending()) {
        stop();
        resolve();
      }
    });
  });
}

/** Edits of one selection: the nodes and edges chosen on the canvas. */
interface Selection {
  nodes: Set<string>;
  edges: Set<string>;
}

const NOTHING: Selection = { nodes: new Set(), edges: new Set() };

function Builder({ workflow, queryKey }: { workflow: Schemas["WorkflowOut"]; queryKey: unknown[] }) {
  const key = workflow.key;
  const queries = useQueryClient();
  const navigate = useNavigate();
  const [initial] = useState(() => readDraft(workflow.draft));
  // What of the stored draft cannot be drawn: written back with every save.
  const [aside, setAside] = useState<Aside>(initial.aside);
  // What the next save writes back (kept in step with `aside`).
  const asideNow = useRef<Aside>(initial.aside);
  const [history, dispatch] = useReducer(reducer, undefined, () => historyOf(placed(initial.doc)));
  const doc = history.present;
  const edit = useCallback((next: WfDoc) => dispatch({ kind: "edit", doc: next }), []);
  const [chosen, setSelection] = useState<Selection>(NOTHING);
  // What is selected and still there (undo, a rename or a restore may take
  // a chosen node or edge away).
  const edgeIds = useMemo(() => edgeIdsOf(doc), [doc]);
  const selection = useMemo(() => {
    const nodes = new Set([...chosen.nodes].filter((id) => doc.nodes.some((n) => n.id === id)));
    const edges = new Set([...chosen.edges].filter((id) => edgeIds.index.has(id)));
    return nodes.size === chosen.nodes.size && edges.size === chosen.edges.size ? chosen : { nodes, edges };
  }, [chosen, doc.nodes, edgeIds]);
  // The node whose properties show: the one node selected.
  const selected = selection.nodes.size === 1 && selection.edges.size === 0 ? [...selection.nodes][0] : null;
  const setSelected = useCallback((id: string | null) => setSelection(id ? { nodes: new Set([id]), edges: new Set() } : NOTHING), []);
  const [preview, setPreview] = useState<PreviewResult | null>(null);
  const [publishing, setPublishing] = useState(false);
  const flow = useReactFlow();

  // ---- the server's view of the draft ------------------------------------
  const settled = useSettled(doc, 400);
  const validation = useQuery({
    queryKey: ["validate", key, settled, aside],
    queryFn: () =>
      unwrap(client.POST("/v1/workflows/{workflow}/validate", { params: { path: { workflow: key } }, body: { definition: withAside(settled, aside) } })),
    placeholderData: (prev) => prev,
    staleTime: Infinity,
  });
  const problems: Problem[] = useMemo(() => (validation.data?.errors ?? []) as Problem[], [validation.data]);
  // Problems on edges name an index of the document validated (which may be
  // older than the one shown): carried over by the edge's identity.
  const validated = validation.data && !validation.isPlaceholderData ? settled : null;
  const placedProblems = useMemo(() => {
    const placed = problemsByPlace(problems);
    const byKey = new Map<string, Problem[]>();
    if (validated) {
      for (const [i, ps] of placed.edges) {
        const e = validated.edges[i];
        if (e) byKey.set(edgeKey(e), ps);
        else placed.document.push(...ps);
      }
    }
    return { ...placed, edgeKeys: byKey };
  }, [problems, validated]);
  const orphans = useMemo(() => orphanEdges(doc), [doc]);

  // The draft is saved as it settles (every edit is kept on the server).
  // Saves (and a publish) of this workflow run one at a time, in order
  // (one mutation scope), so an older draft never lands after a newer one.
  const [saved, setSaved] = useState<WfDoc>(doc);
  // The last document the server took (a failed save is not one).
  const confirmed = useRef<WfDoc>(doc);
  const save = useMutation({
    scope: { id: draftScope(key) },
    mutationFn: (d: WfDoc) =>
      unwrap(client.PUT("/v1/workflows/{workflow}", { params: { path: { workflow: key } }, body: { definition: withAside(d, asideNow.current) } })),
    onSuccess: (w, d) => {
      confirmed.current = d;
      setSaved((s) => (lastSent.current === d ? d : s));
      queries.setQueryData(queryKey, w);
    },
  });
  const saveDraft = save.mutate;
  const toSave = useSettled(doc, 800);
  const lastSent = useRef<WfDoc>(doc);
  const latest = useRef<WfDoc>(doc);
  useEffect(() => {
    latest.current = doc;
  }, [doc]);
  useEffect(() => {
    if (toSave !== lastSent.current) {
      lastSent.current = toSave;
      saveDraft(toSave);
    }
  }, [toSave, saveDraft]);
  // Leaving the page: what the server has not taken yet (the last 800 ms,
  // or a save that failed) is sent once more; closing the tab with changes
  // unsaved asks first.
  useEffect(
    () => () => {
      if (latest.current !== confirmed.current) saveDraft(latest.current);
    },
    [saveDraft],
  );
  const dirty = doc !== saved || save.isPending;
  const onPublished = useCallback(
    (w: Schemas["WorkflowOut"], d: WfDoc) => {
      // Publishing saved this document as the draft too (the autosave may
      // send it once more: the same document, no harm).
      setSaved(d);
      queries.setQueryData(queryKey, w);
      queries.invalidateQueries({ queryKey: ["workflows"] });
      queries.invalidateQueries({ queryKey: ["versions", key] });
    },
    [queries, queryKey, key],
  );
  useEffect(() => {
    if (!dirty) return;
    const warn = (e: BeforeUnloadEvent) => e.preventDefault();
    window.addEventListener("beforeunload", warn);
    return () => window.removeEventListener("beforeunload", warn);
  }, [dirty]);

  // ---- canvas ------------------------------------------------------------
  const decorations = useMemo(() => {
    const visited = new Map<string, string>();
    if (preview) {
      for (const s of preview.steps) {
        if (s.type === "node_entered" && s.node && !visited.has(s.node)) visited.set(s.node, formatOffset(s.offset_ms));
      }
    }
    return visited;
  }, [preview]);
  // The canvas's nodes: derived from the document, the selection and what
  // the page knows about each node. A node whose inputs did not change
  // keeps its object, so only changed nodes render again (a 200-node
  // journey stays quick); sizes the canvas measured are kept.
  const buildNodes = useCallback(
    (d: WfDoc, sel: Set<string>, old: JourneyFlowNode[]): JourneyFlowNode[] => {
      const before = new Map(old.map((n) => [n.id, n]));
      return d.nodes.map((n) => {
        const problems = placedProblems.nodes.get(n.id)?.map((p) => (p.field ? `${p.field}: ${p.message}` : p.message));
        const data = {
          node: n,
          branches: branchesOf(n),
          problems,
          visited: decorations.has(n.id),
          current: preview?.current_node === n.id,
          note: decorations.has(n.id) ? `preview: entered at ${decorations.get(n.id)}` : undefined,
        };
        const o = before.get(n.id);
        const same =
          o &&
          o.data.node === n &&
          o.selected === sel.has(n.id) &&
          (o.data.problems ?? []).join("\n") === (problems ?? []).join("\n") &&
          o.data.visited === data.visited &&
          o.data.current === data.current &&
          o.data.note === data.note;
        if (same) return o;
        return {
          id: n.id,
          type: "journey" as const,
          position: n.position ?? { x: 0, y: 0 },
          selected: sel.has(n.id),
          measured: o?.measured,
          data,
        };
      });
    },
    [placedProblems, decorations, preview],
  );
  const selectedNodes = selection.nodes;
  const [canvas, setCanvas] = useState(() => ({ doc, selectedNodes, buildNodes, nodes: buildNodes(doc, selectedNodes, []) }));
  if (canvas.doc !== doc || canvas.selectedNodes !== selectedNodes || canvas.buildNodes !== buildNodes) {
    // Derived during render (React's pattern for state that follows props).
    setCanvas({ doc, selectedNodes, buildNodes, nodes: buildNodes(doc, selectedNodes, canvas.nodes) });
  }
  const nodes = canvas.nodes;
  const setNodes = useCallback(
    (f: (ns: JourneyFlowNode[]) => JourneyFlowNode[]) => setCanvas((c) => ({ ...c, nodes: f(c.nodes) })),
    [],
  );
  const edges: Edge[] = useMemo(
    () =>
      doc.edges.flatMap((e, i) => {
        // An exit the node no longer has cannot be drawn: listed instead.
        if (orphans.has(i)) return [];
        const id = edgeIds.ids[i];
        const bad = placedProblems.edgeKeys.has(edgeKey(e));
        return [
          {
            id,
            source: e.from,
            target: e.to,
            sourceHandle: e.branch ?? "next",
            targetHandle: "in",
            label: bad ? `⚠ ${e.branch ?? ""}` : e.branch,
            selected: selection.edges.has(id),
            style: bad ? { stroke: "#c62828", strokeDasharray: "6 3" } : undefined,
            ariaLabel: `${e.from} ${e.branch ?? ""} to ${e.to}`,
          },
        ];
      }),
    [doc.edges, placedProblems, selection.edges, orphans, edgeIds],
  );
  /** Selection changes from the canvas (a click, a box, shift-click). */
  const select = useCallback((kind: "nodes" | "edges", changes: { id: string; selected: boolean }[]) => {
    if (changes.length === 0) return;
    setSelection((sel) => {
      const next = new Set(sel[kind]);
      for (const c of changes) {
        if (c.selected) next.add(c.id);
        else next.delete(c.id);
      }
      return { ...sel, [kind]: next };
    });
  }, []);
  const onEdgesChange = useCallback(
    (changes: EdgeChange[]) => select("edges", changes.flatMap((c) => (c.type === "select" ? [{ id: c.id, selected: c.selected }] : []))),
    [select],
  );

  const onNodesChange = useCallback(
    (changes: NodeChange<JourneyFlowNode>[]) => {
      // Moves are drawn at once and recorded when the drag ends (one undo
      // step per drag); selection follows the canvas; removal goes through
      // `onNodesDelete`.
      setNodes((ns) => applyNodeChanges(changes.filter((c) => c.type !== "remove"), ns));
      const ended = changes.filter((c) => c.type === "position" && !c.dragging && c.position);
      if (ended.length > 0) {
        const moves = new Map(ended.map((c) => [(c as { id: string }).id, (c as { position: { x: number; y: number } }).position]));
        edit(moveNodes(doc, moves));
      }
      select("nodes", changes.flatMap((c) => (c.type === "select" ? [{ id: c.id, selected: c.selected }] : [])));
    },
    [doc, edit, setNodes, select],
  );
  const onConnect = useCallback(
    (c: Connection) => {
      if (!c.source || !c.target) return;
      edit(connect(doc, c.source, c.target, c.sourceHandle && c.sourceHandle !== "next" ? c.sourceHandle : null));
    },
    [doc, edit],
  );
  const onDelete = useCallback(
    ({ nodes: ns, edges: es }: { nodes: JourneyFlowNode[]; edges: Edge[] }) => {
      let next = doc;
      if (es.length > 0) next = removeEdges(next, new Set(es.flatMap((e) => edgeIds.index.get(e.id) ?? [])));
      if (ns.length > 0) next = removeNodes(next, new Set(ns.map((n) => n.id)));
      setSelection(NOTHING);
      edit(next);
    },
    [doc, edit, edgeIds],
  );

  // Undo and redo from the keyboard (not while typing in a field).
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      const t = e.target as HTMLElement;
      if (t.closest("input, textarea, select, [contenteditable]")) return;
      const mod = e.ctrlKey || e.metaKey;
      if (mod && e.key.toLowerCase() === "z") {
        e.preventDefault();
        dispatch({ kind: e.shiftKey ? "redo" : "undo" });
      } else if (mod && e.key.toLowerCase() === "y") {
        e.preventDefault();
        dispatch({ kind: "redo" });
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, []);

  // ---- palette -----------------------------------------------------------
  const registry = useRegistry();
  const actions = useMemo(
    () => (registry.data ?? []).filter((d) => d.definition.kind === "action" && d.enabled),
    [registry.data],
  );
  const addAt = useCallback(
    (type: string, action: string | undefined, position: { x: number; y: number }) => {
      const id = freshId(doc, action ? action.split(".").pop()! : type);
      edit(addNode(doc, { id, type, position, config: defaultConfig(type, action) }));
      setSelected(id);
    },
    [doc, edit, setSelected],
  );
  const onDrop = useCallback(
    (e: React.DragEvent) => {
      e.preventDefault();
      const raw = e.dataTransfer.getData("application/x-sojourn-node");
      if (!raw) return;
      const { type, action } = JSON.parse(raw) as { type: string; action?: string };
      const p = flow.screenToFlowPosition({ x: e.clientX, y: e.clientY });
      addAt(type, action, { x: Math.round(p.x - 100), y: Math.round(p.y - 20) });
    },
    [flow, addAt],
  );
  const addFromKeyboard = (type: string, action?: string) => {
    // Below the lowest node, so it does not land on another.
    const y = Math.max(0, ...doc.nodes.map((n) => (n.position?.y ?? 0) + 110));
    addAt(type, action, { x: 0, y });
    flow.setCenter(100, y + 30, { duration: 200, zoom: flow.getZoom() });
  };

  const selectedNode = doc.nodes.find((n) => n.id === selected) ?? null;

  return (
    <div className="builder">
      <div className="toolbar spread">
        <div className="row">
          <h1 style={{ margin: 0 }}>{workflow.name || key}</h1>
          {workflow.latest_version ? <Badge value={`published v${workflow.latest_version}`} kind="ok" /> : <Badge value="never published" />}
          <span className="muted" aria-live="polite">
            {save.error ? "" : dirty ? "saving…" : "draft saved"}
          </span>
          {validation.data && (
            <span aria-live="polite" data-testid="validity">
              {validation.data.valid ? <Badge value="valid" kind="ok" /> : <Badge value={`${problems.length} problem(s)`} kind="bad" />}
            </span>
          )}
        </div>
        <div className="row">
          <button onClick={() => dispatch({ kind: "undo" })} disabled={history.past.length === 0} title="Undo (Ctrl+Z)">
            Undo
          </button>
          <button onClick={() => dispatch({ kind: "redo" })} disabled={history.future.length === 0} title="Redo (Ctrl+Shift+Z)">
            Redo
          </button>
          <button onClick={() => edit(moveNodes(doc, layout({ ...doc, nodes: doc.nodes.map(({ position: _p, ...n }) => n) })))}>Tidy up</button>
          <button className="primary" onClick={() => setPublishing(true)}>
            Publish…
          </button>
          <StartButton workflow={key} published={Boolean(workflow.latest_version)} onStarted={(exe) => navigate(`/executions/${exe}`)} />
        </div>
      </div>
      <aside className="palette" aria-label="Palette">
        <h3>Steps</h3>
        {NODE_TYPES.filter((t) => t !== "action").map((t) => (
          <PaletteItem key={t} type={t} title={NODE_TITLES[t]} onAdd={() => addFromKeyboard(t)} />
        ))}
        <h3>Actions</h3>
        {registry.error && <ErrorNote error={registry.error} />}
        {actions.map((d) => (
          <PaletteItem key={d.name} type="action" action={d.name} title={d.definition.title || d.name} sub={d.name} onAdd={() => addFromKeyboard("action", d.name)} />
        ))}
      </aside>
      <div className="canvas" onDragOver={(e) => e.preventDefault()} onDrop={onDrop} data-testid="canvas">
        <ReactFlow
          nodes={nodes}
          edges={edges}
          nodeTypes={nodeTypes}
          onNodesChange={onNodesChange}
          onEdgesChange={onEdgesChange}
          onConnect={onConnect}
          onDelete={onDelete}
          onPaneClick={() => setSelected(null)}
          deleteKeyCode={["Delete", "Backspace"]}
          fitView
          fitViewOptions={{ maxZoom: 1 }}
          minZoom={0.1}
          onlyRenderVisibleElements
        >
          <Background />
          <Controls />
          <MiniMap pannable zoomable />
        </ReactFlow>
      </div>
      <aside className="side" aria-label="Properties">
        {placedProblems.document.length > 0 && (
          <div className="alert">
            {placedProblems.document.map((p) => (
              <div key={p.field + p.message}>
                {p.field ? `${p.field}: ` : ""}
                {p.message}
              </div>
            ))}
          </div>
        )}
        {aside.nodes.length + aside.edges.length > 0 && (
          <div className="alert" role="status">
            {aside.nodes.length} node(s) and {aside.edges.length} edge(s) of the stored draft cannot be drawn (no id, type or ends): they are kept as they
            are and saved with the draft; the problems below name them.{" "}
            <button
              className="link"
              onClick={() => {
                // Dropped for good: saved now, not at the next edit.
                asideNow.current = { nodes: [], edges: [] };
                setAside(asideNow.current);
                saveDraft(latest.current);
              }}
            >
              drop them
            </button>
          </div>
        )}
        {(placedProblems.edgeKeys.size > 0 || orphans.size > 0) && (
          <div className="alert" aria-label="Problems with connections">
            {doc.edges.map((e, i) => {
              const ps = placedProblems.edgeKeys.get(edgeKey(e));
              if (!ps && !orphans.has(i)) return null;
              return (
                <div key={edgeIds.ids[i]} className="spread">
                  <span>
                    {e.from} {e.branch ? `(${e.branch}) ` : ""}→ {e.to}:{" "}
                    {ps ? ps.map((p) => p.message).join("; ") : `${e.from} has no exit ${e.branch ? `“${e.branch}”` : "without a label"} now`}
                  </span>
                  <button className="link" onClick={() => edit(removeEdges(doc, new Set([i])))}>
                    remove
                  </button>
                </div>
              );
            })}
          </div>
        )}
        {validation.error && <ErrorNote error={validation.error} />}
        {save.error && <ErrorNote error={save.error} />}
        {selectedNode ? (
          <NodeEditor
            key={selectedNode.id}
            node={selectedNode}
            doc={doc}
            problems={placedProblems.nodes.get(selectedNode.id) ?? []}
            onChange={(n, byUser = true) => {
              const next = updateNode(doc, selectedNode.id, n);
              if (byUser) edit(next);
              else dispatch({ kind: "amend", doc: next });
              if (n.id !== selectedNode.id) setSelected(n.id);
            }}
            onDoc={edit}
            onDelete={() => {
              edit(removeNodes(doc, new Set([selectedNode.id])));
              setSelected(null);
            }}
          />
        ) : (
          <div className="card">
            <h3 style={{ marginTop: 0 }}>Build the journey</h3>
            <p className="muted">
              Drag steps and actions from the palette onto the canvas (or press Enter on one), join an exit at the bottom of a node to the top of the next,
              and click a node to edit it. Delete removes what is selected; Ctrl+Z undoes.
            </p>
          </div>
        )}
        <Preview workflow={key} doc={withAside(doc, aside)} result={preview} onResult={setPreview} />
        <Versions
          workflow={key}
          onRestore={(d) => {
            const restored = readDraft(d);
            asideNow.current = restored.aside;
            setAside(restored.aside);
            edit(placed(restored.doc));
          }}
        />
      </aside>
      {publishing && (
        <PublishDialog
          workflow={key}
          scope={draftScope(key)}
          aside={aside}
          doc={doc}
          latest={workflow.latest_version ?? null}
          onClose={() => setPublishing(false)}
          onPublished={onPublished}
        />
      )}
    </div>
  );
}

function PaletteItem({ type, action, title, sub, onAdd }: { type: string; action?: string; title: string; sub?: string; onAdd: () => void }) {
  return (
    <div
      className="item"
      role="button"
      tabIndex={0}
      draggable
      data-palette={action ?? type}
      onDragStart={(e) => {
        e.dataTransfer.setData("application/x-sojourn-node", JSON.stringify({ type, action }));
        e.dataTransfer.effectAllowed = "move";
      }}
      onKeyDown={(e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          onAdd();
        }
      }}
      title="Drag onto the canvas, or press Enter to add"
    >
      {title}
      {sub && <small>{sub}</small>}
    </div>
  );
}

/** The config schema of a node type, from the workflow schema's `$defs`. */
function configSchema(schema: Record<string, unknown> | undefined, type: string): RJSFSchema | null {
  if (!schema) return null;
  const defs = (schema.$defs ?? {}) as Record<string, RJSFSchema>;
  const name = { start: "StartConfig", action: "ActionConfig", delay: "DelayConfig", wait_for_event: "WaitForEventConfig", condition: "ConditionConfig", split: "SplitConfig", function: "FunctionConfig", exit: "ExitConfig" }[type];
  const def = name ? defs[name] : undefined;
  return def ? ({ ...def, $defs: defs } as RJSFSchema) : null;
}

function NodeEditor({
  node,
  doc,
  problems,
  onChange,
  onDoc,
  onDelete,
}: {
  node: WfNode;
  doc: WfDoc;
  problems: Problem[];
  onChange: (n: WfNode, byUser?: boolean) => void;
  /** An edit of the document (the node's exits). */
  onDoc: (d: WfDoc) => void;
  onDelete: () => void;
}) {
  const schema = useWorkflowSchema();
  const registry = useRegistry();
  const [id, setId] = useState(node.id);
  const config = (node.config ?? {}) as Record<string, unknown>;
  const actionName = node.type === "action" ? String(config.action ?? "") : "";
  const definition = (registry.data ?? []).find((d) => d.name === actionName);
  const base = configSchema(schema.data, node.type);
  // An action's form: its config, with `inputs` from the registry's schema.
  const formSchema = useMemo(() => {
    if (!base) return null;
    if (node.type !== "action" || !definition) return base;
    const props = { ...((base.properties ?? {}) as Record<string, RJSFSchema>) };
    props.inputs = { ...(definition.definition.inputs as RJSFSchema), title: "Inputs" };
    delete props.action;
    return { ...base, properties: props, required: (base.required ?? []).filter((r: string) => r !== "action") } as RJSFSchema;
  }, [base, node.type, definition]);
  const errors = useMemo(() => formErrors(problems) as ErrorSchema, [problems]);
  const others = doc.nodes.filter((n) => n.id !== node.id);
  const branches = branchesOf(node);
  const suggestions = useMemo(() => {
    const s = ["input.", "vars.", "subject", "event.payload."];
    for (const n of doc.nodes) if (n.type === "action") s.push(`nodes.${n.id}.output`);
    return s;
  }, [doc.nodes]);
  const unplaced = problems.filter((p) => !p.field.startsWith("config.") || !formSchema);
  return (
    <div className="card" aria-label={`Node ${node.id}`}>
      <div className="spread">
        <h3 style={{ margin: 0 }}>{NODE_TITLES[node.type] ?? node.type}</h3>
        <button className="danger" onClick={onDelete}>
          Delete node
        </button>
      </div>
      <label>
        Id (what the engine and the analytics call it)
        <input
          value={id}
          onChange={(e) => setId(e.target.value)}
          onBlur={() => {
            const next = id.trim();
            if (next && next !== node.id && /^[A-Za-z0-9_-]{1,128}$/.test(next) && !others.some((n) => n.id === next)) onChange({ ...node, id: next });
            else setId(node.id);
          }}
          aria-label="Node id"
        />
      </label>
      <label>
        Label
        <input value={node.name ?? ""} onChange={(e) => onChange({ ...node, name: e.target.value || undefined })} aria-label="Node label" />
      </label>
      {node.type === "action" && (
        <label>
          Action
          <select value={actionName} onChange={(e) => onChange({ ...node, config: { ...config, action: e.target.value, inputs: {} } })} aria-label="Action type">
            {!definition && <option value={actionName}>{actionName || "choose…"}</option>}
            {(registry.data ?? [])
              .filter((d) => d.definition.kind === "action")
              .map((d) => (
                <option key={d.name} value={d.name} disabled={!d.enabled}>
                  {d.name}
                  {d.enabled ? "" : " (disabled)"}
                </option>
              ))}
          </select>
        </label>
      )}
      {unplaced.length > 0 && (
        <div className="alert">
          {unplaced.map((p) => (
            <div key={p.field + p.message}>
              {p.field}: {p.message}
            </div>
          ))}
        </div>
      )}
      <datalist id="cel-suggestions">
        {suggestions.map((s) => (
          <option key={s} value={s} />
        ))}
      </datalist>
      {formSchema ? (
        <SchemaForm
          schema={formSchema}
          value={node.type === "action" ? Object.fromEntries(Object.entries(config).filter(([k]) => k !== "action")) : config}
          onChange={(v, byUser) => onChange({ ...node, config: node.type === "action" ? { ...v, action: actionName } : v }, byUser)}
          errors={errors}
          suggestionsId="cel-suggestions"
        />
      ) : (
        <Loading what="the form" />
      )}
      {branches.length > 0 && (
        <div>
          <h3>Exits</h3>
          {branches.map((b) => {
            const current = doc.edges.find((e) => e.from === node.id && (e.branch ?? null) === b);
            return (
              <label key={b ?? "next"}>
                {b ?? "next"} leads to
                <select
                  value={current?.to ?? ""}
                  aria-label={`Exit ${b ?? "next"} leads to`}
                  onChange={(e) => {
                    const to = e.target.value;
                    const edges = doc.edges.filter((x) => !(x.from === node.id && (x.branch ?? null) === b));
                    onDoc(to ? connect({ ...doc, edges }, node.id, to, b) : { ...doc, edges });
                  }}
                >
                  <option value="">(nothing)</option>
                  {others.map((n) => (
                    <option key={n.id} value={n.id}>
                      {n.id}
                    </option>
                  ))}
                </select>
              </label>
            );
          })}
        </div>
      )}
    </div>
  );
}
