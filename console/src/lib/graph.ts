// The builder's model: a workflow document, the graph the canvas draws of
// it, and the edits made to it. Pure functions, tested without a browser.

export interface Position {
  x: number;
  y: number;
}

export interface WfNode {
  id: string;
  type: string;
  name?: string;
  position?: Position;
  config?: Record<string, unknown>;
}

export interface WfEdge {
  from: string;
  to: string;
  branch?: string;
}

export interface WfDoc {
  key?: string;
  name?: string;
  description?: string;
  settings?: Record<string, unknown>;
  nodes: WfNode[];
  edges: WfEdge[];
  [other: string]: unknown;
}

/** A problem the server found, as `/validate` and publish answer it. */
export interface Problem {
  node?: string | null;
  edge?: number | null;
  field: string;
  message: string;
}

/** The structural node types, in palette order. */
export const NODE_TYPES = [
  "start",
  "action",
  "delay",
  "wait_for_event",
  "condition",
  "split",
  "function",
  "exit",
] as const;

export const NODE_TITLES: Record<string, string> = {
  start: "Start",
  action: "Action",
  delay: "Delay",
  wait_for_event: "Wait for event",
  condition: "Condition",
  split: "Split",
  function: "Set variables",
  exit: "Exit",
};

/**
 * A node's exits, as the engine compiles them (`runtime/src/compile.rs`):
 * `[null]` for one unlabelled exit, `[]` for an exit node, else the labels.
 */
export function branchesOf(node: WfNode): (string | null)[] {
  const c = (node.config ?? {}) as Record<string, unknown>;
  switch (node.type) {
    case "start":
    case "delay":
    case "function":
      return [null];
    case "action":
      return ["success", "failure", "skipped"];
    case "wait_for_event":
      return c.timeout ? ["event", "timeout"] : ["event"];
    case "condition":
      return ["true", "false"];
    case "split": {
      const rules = Array.isArray(c.rules) ? (c.rules as { branch?: unknown }[]) : [];
      const variants = Array.isArray(c.variants) ? (c.variants as { branch?: unknown }[]) : [];
      if (rules.length > 0) {
        return [...rules.map((r) => String(r.branch ?? "")).filter(Boolean), "default"];
      }
      return variants.map((v) => String(v.branch ?? "")).filter(Boolean);
    }
    case "exit":
      return [];
    default:
      return [null];
  }
}

/** The exits the engine requires to be connected. */
export function requiredBranches(node: WfNode): (string | null)[] {
  if (node.type === "action") return ["success"];
  return branchesOf(node);
}

/** A fresh id for a node of `type`, unused in `doc`: `delay`, `delay_2`, … */
export function freshId(doc: WfDoc, base: string): string {
  const taken = new Set(doc.nodes.map((n) => n.id));
  const stem = base.replace(/[^a-z0-9_]/gi, "_").toLowerCase() || "node";
  if (!taken.has(stem)) return stem;
  for (let i = 2; ; i++) {
    const id = `${stem}_${i}`;
    if (!taken.has(id)) return id;
  }
}

/** The configuration a new node starts with (valid where it can be). */
export function defaultConfig(type: string, action?: string): Record<string, unknown> {
  switch (type) {
    case "start":
      return { triggers: [{ kind: "api" }] };
    case "action":
      return { action: action ?? "http.request", inputs: {} };
    case "delay":
      return { duration: "1h" };
    case "wait_for_event":
      return { event: "", timeout: "1d" };
    case "condition":
      return { expression: "" };
    case "split":
      return {
        variants: [
          { branch: "a", percent: 50 },
          { branch: "b", percent: 50 },
        ],
      };
    case "function":
      return { assign: [] };
    case "exit":
      return { outcome: "done" };
    default:
      return {};
  }
}

// ---- edits ---------------------------------------------------------------

export function addNode(doc: WfDoc, node: WfNode): WfDoc {
  return { ...doc, nodes: [...doc.nodes, node] };
}

export function moveNodes(doc: WfDoc, moves: Map<string, Position>): WfDoc {
  return {
    ...doc,
    nodes: doc.nodes.map((n) => {
      const p = moves.get(n.id);
      return p ? { ...n, position: { x: Math.round(p.x), y: Math.round(p.y) } } : n;
    }),
  };
}

/** Removes nodes and every edge that touches them. */
export function removeNodes(doc: WfDoc, ids: Set<string>): WfDoc {
  return {
    ...doc,
    nodes: doc.nodes.filter((n) => !ids.has(n.id)),
    edges: doc.edges.filter((e) => !ids.has(e.from) && !ids.has(e.to)),
  };
}

export function removeEdges(doc: WfDoc, indexes: Set<number>): WfDoc {
  return { ...doc, edges: doc.edges.filter((_, i) => !indexes.has(i)) };
}

/**
 * Connects `from`'s exit `branch` to `to`. An exit leads to one node: a
 * connection from an exit already used replaces the old one.
 */
export function connect(doc: WfDoc, from: string, to: string, branch: string | null): WfDoc {
  if (from === to) return doc;
  const edges = doc.edges.filter((e) => !(e.from === from && (e.branch ?? null) === branch));
  const edge: WfEdge = branch ? { from, to, branch } : { from, to };
  return { ...doc, edges: [...edges, edge] };
}

/**
 * Replaces a node (its config, name). A new id renames its edges too; a
 * split whose rules or variants keep their number but change names carries
 * each edge over to the renamed branch (`a` → `ab` keeps its edge while
 * typed). Edges of exits that went away stay: they are listed as orphans
 * (`orphanEdges`) for the user to remove, and undo needs nothing special.
 */
export function updateNode(doc: WfDoc, id: string, next: WfNode): WfDoc {
  const renamed = next.id !== id;
  const before = doc.nodes.find((n) => n.id === id);
  const branchRename = new Map<string, string>();
  if (before && before.type === "split" && next.type === "split") {
    const a = splitBranches(before);
    const b = splitBranches(next);
    // A rename is a name that went at a place where a new one came: a
    // reorder (both names still there) moves nothing.
    const was = new Set(a);
    const is = new Set(b);
    if (a.length === b.length) a.forEach((x, i) => x && b[i] && !is.has(x) && !was.has(b[i]) && branchRename.set(x, b[i]));
  }
  if (!renamed && branchRename.size === 0) {
    return { ...doc, nodes: doc.nodes.map((n) => (n.id === id ? next : n)) };
  }
  return {
    ...doc,
    nodes: doc.nodes.map((n) => (n.id === id ? next : n)),
    edges: doc.edges.map((e) => {
      const out = { ...e };
      if (e.from === id) {
        if (renamed) out.from = next.id;
        if (e.branch && branchRename.has(e.branch)) out.branch = branchRename.get(e.branch);
      }
      if (renamed && e.to === id) out.to = next.id;
      return out;
    }),
  };
}

/** A split's named branches in order (its rules' or its variants'). */
function splitBranches(n: WfNode): string[] {
  const c = (n.config ?? {}) as { rules?: unknown; variants?: unknown };
  const list = Array.isArray(c.rules) && c.rules.length > 0 ? c.rules : Array.isArray(c.variants) ? c.variants : [];
  return list.map((x) => String((x as { branch?: unknown } | null)?.branch ?? ""));
}

/** An edge's identity: its node and exit (each exit leads to one node). */
export function edgeKey(e: WfEdge): string {
  return `${e.from}|${e.branch ?? ""}|${e.to}`;
}

/** Edges leaving by an exit their node does not have (or from no node). */
export function orphanEdges(doc: WfDoc): Set<number> {
  const exits = new Map(doc.nodes.map((n) => [n.id, new Set(branchesOf(n))]));
  const out = new Set<number>();
  doc.edges.forEach((e, i) => {
    const has = exits.get(e.from);
    if (!has || !has.has(e.branch ?? null) || !exits.has(e.to)) out.add(i);
  });
  return out;
}

/** What of a stored draft the builder cannot draw, kept to be written back. */
export interface Aside {
  nodes: unknown[];
  edges: unknown[];
}

/**
 * A stored draft as the builder can edit it: nodes without a string id and
 * type, and edges without both ends, are set aside (a draft is any JSON
 * object to the API) and written back with every save, so nothing of the
 * stored draft is lost and the server's validation still names them.
 */
export function readDraft(v: unknown): { doc: WfDoc; aside: Aside } {
  const d = (v && typeof v === "object" && !Array.isArray(v) ? v : {}) as WfDoc;
  const obj = (x: unknown): x is Record<string, unknown> => Boolean(x) && typeof x === "object" && !Array.isArray(x);
  const aside: Aside = { nodes: [], edges: [] };
  const nodes: WfNode[] = [];
  for (const n of Array.isArray(d.nodes) ? d.nodes : []) {
    if (!(obj(n) && typeof n.id === "string" && typeof n.type === "string")) {
      aside.nodes.push(n);
      continue;
    }
    const p = n.position as unknown;
    const placed = obj(p) && Number.isFinite(p.x) && Number.isFinite(p.y);
    nodes.push(placed || n.position === undefined ? n : { ...n, position: undefined });
  }
  const edges: WfEdge[] = [];
  for (const e of Array.isArray(d.edges) ? d.edges : []) {
    const branch = (e as { branch?: unknown } | null)?.branch;
    if (!(obj(e) && typeof e.from === "string" && typeof e.to === "string" && (branch === undefined || branch === null || typeof branch === "string"))) {
      aside.edges.push(e);
      continue;
    }
    // `"branch": null` is no branch, as the server reads it.
    edges.push(branch === null ? { from: e.from, to: e.to } : e);
  }
  return { doc: { ...d, nodes, edges }, aside };
}

/** The document to send: the builder's, with what it set aside. */
export function withAside(doc: WfDoc, aside: Aside): WfDoc {
  if (aside.nodes.length === 0 && aside.edges.length === 0) return doc;
  return { ...doc, nodes: [...doc.nodes, ...(aside.nodes as WfNode[])], edges: [...doc.edges, ...(aside.edges as WfEdge[])] };
}

// ---- layout --------------------------------------------------------------

export const NODE_WIDTH = 200;
export const NODE_GAP_X = 60;
export const NODE_GAP_Y = 110;

/**
 * Positions for nodes that have none: layered from the start node by the
 * longest path (a breadth-first walk that pushes a node below every node
 * that leads to it), placed left to right in each layer. Nodes with a
 * position keep it.
 */
export function layout(doc: WfDoc): Map<string, Position> {
  const out = new Map<string, Position>();
  const missing = doc.nodes.filter((n) => !n.position);
  for (const n of doc.nodes) if (n.position) out.set(n.id, n.position);
  if (missing.length === 0) return out;
  const next = new Map<string, string[]>();
  const indegree = new Map<string, number>();
  for (const n of doc.nodes) {
    next.set(n.id, []);
    indegree.set(n.id, 0);
  }
  for (const e of doc.edges) {
    if (!next.has(e.from) || !next.has(e.to)) continue;
    next.get(e.from)!.push(e.to);
    indegree.set(e.to, (indegree.get(e.to) ?? 0) + 1);
  }
  // Longest-path layering on the acyclic part (Kahn's order); nodes on a
  // cycle or unreachable go to the layer after their deepest parent seen.
  const depth = new Map<string, number>();
  const queue = doc.nodes.filter((n) => indegree.get(n.id) === 0).map((n) => n.id);
  for (const id of queue) depth.set(id, 0);
  const remaining = new Map(indegree);
  for (let i = 0; i < queue.length; i++) {
    const id = queue[i];
    for (const to of next.get(id)!) {
      depth.set(to, Math.max(depth.get(to) ?? 0, (depth.get(id) ?? 0) + 1));
      const r = remaining.get(to)! - 1;
      remaining.set(to, r);
      if (r === 0) queue.push(to);
    }
  }
  // What Kahn's order could not reach (a loop, and what follows it): one
  // layer below the node it is first reached from.
  const queued = new Set(queue);
  const bfs = [...queue];
  for (let i = 0; i < bfs.length; i++) {
    for (const to of next.get(bfs[i])!) {
      if (queued.has(to)) continue;
      queued.add(to);
      depth.set(to, Math.max(depth.get(to) ?? 0, (depth.get(bfs[i]) ?? 0) + 1));
      bfs.push(to);
    }
  }
  const layers = new Map<number, string[]>();
  for (const n of doc.nodes) {
    const d = depth.get(n.id) ?? 0;
    if (!layers.has(d)) layers.set(d, []);
    layers.get(d)!.push(n.id);
  }
  for (const [d, ids] of layers) {
    const width = ids.length * (NODE_WIDTH + NODE_GAP_X) - NODE_GAP_X;
    ids.forEach((id, i) => {
      if (!out.has(id)) {
        out.set(id, { x: i * (NODE_WIDTH + NODE_GAP_X) - width / 2, y: d * NODE_GAP_Y });
      }
    });
  }
  return out;
}

// ---- problems ------------------------------------------------------------

/** The server's problems, by node, by edge and for the whole document. */
export function problemsByPlace(problems: Problem[]): {
  nodes: Map<string, Problem[]>;
  edges: Map<number, Problem[]>;
  document: Problem[];
} {
  const nodes = new Map<string, Problem[]>();
  const edges = new Map<number, Problem[]>();
  const document: Problem[] = [];
  for (const p of problems) {
    if (p.node) {
      if (!nodes.has(p.node)) nodes.set(p.node, []);
      nodes.get(p.node)!.push(p);
    } else if (p.edge !== undefined && p.edge !== null) {
      if (!edges.has(p.edge)) edges.set(p.edge, []);
      edges.get(p.edge)!.push(p);
    } else {
      document.push(p);
    }
  }
  return { nodes, edges, document };
}

/**
 * A node's problems as an error tree for its form: `config.inputs.to` →
 * `{inputs: {to: {__errors: [message]}}}` (the form edits `config`).
 */
export function formErrors(problems: Problem[]): Record<string, unknown> {
  const root: Record<string, unknown> = {};
  for (const p of problems) {
    const path = p.field
      .replace(/\[(\d+)\]/g, ".$1")
      .split(".")
      .filter(Boolean);
    if (path[0] === "config") path.shift();
    else continue;
    let at = root;
    for (const part of path) {
      at[part] = (at[part] as Record<string, unknown>) ?? {};
      at = at[part] as Record<string, unknown>;
    }
    const list = (at.__errors as string[]) ?? [];
    list.push(p.message);
    at.__errors = list;
  }
  return root;
}

// ---- undo and redo -------------------------------------------------------

/** The edit history: every document the builder showed, and where it is. */
export interface History {
  past: WfDoc[];
  present: WfDoc;
  future: WfDoc[];
}

const HISTORY_LIMIT = 200;

export function historyOf(doc: WfDoc): History {
  return { past: [], present: doc, future: [] };
}

/** Records an edit (nothing when it changed nothing). */
export function record(h: History, next: WfDoc): History {
  if (next === h.present) return h;
  const past = [...h.past, h.present];
  if (past.length > HISTORY_LIMIT) past.shift();
  return { past, present: next, future: [] };
}

export function undo(h: History): History {
  if (h.past.length === 0) return h;
  const present = h.past[h.past.length - 1];
  return { past: h.past.slice(0, -1), present, future: [h.present, ...h.future] };
}

export function redo(h: History): History {
  if (h.future.length === 0) return h;
  const [present, ...future] = h.future;
  return { past: [...h.past, h.present], present, future };
}

// ---- diff ----------------------------------------------------------------

/** JSON with sorted keys, so two documents compare line by line. */
export function stableJson(v: unknown): string {
  return JSON.stringify(sortKeys(v), null, 2);
}

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") {
    return Object.fromEntries(
      Object.keys(v as object)
        .sort()
        .map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]),
    );
  }
  return v;
}

/** The document without what only the builder uses (positions). */
export function withoutLayout(doc: WfDoc): WfDoc {
  return { ...doc, nodes: doc.nodes.map(({ position: _p, ...n }) => n) };
}
