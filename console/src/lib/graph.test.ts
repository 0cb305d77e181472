import { describe, expect, it } from "vitest";
import {
  branchesOf,
  connect,
  formErrors,
  freshId,
  historyOf,
  layout,
  orphanEdges,
  problemsByPlace,
  readDraft,
  record,
  redo,
  removeNodes,
  stableJson,
  undo,
  updateNode,
  withAside,
  withoutLayout,
  type WfDoc,
  type WfNode,
} from "./graph";
import { isCelField, syntaxHelp } from "./syntax";

const doc = (): WfDoc => ({
  nodes: [
    { id: "start", type: "start", config: {} },
    { id: "wait", type: "wait_for_event", config: { event: "paid", timeout: "1d" } },
    { id: "done", type: "exit", config: {} },
  ],
  edges: [
    { from: "start", to: "wait" },
    { from: "wait", to: "done", branch: "event" },
  ],
});

describe("branches", () => {
  it("follow the engine's rules per node type", () => {
    expect(branchesOf({ id: "a", type: "delay" })).toEqual([null]);
    expect(branchesOf({ id: "a", type: "exit" })).toEqual([]);
    expect(branchesOf({ id: "a", type: "condition" })).toEqual(["true", "false"]);
    expect(branchesOf({ id: "a", type: "wait_for_event", config: { event: "x" } })).toEqual(["event"]);
    expect(branchesOf({ id: "a", type: "wait_for_event", config: { event: "x", timeout: "1h" } })).toEqual([
      "event",
      "timeout",
    ]);
    expect(
      branchesOf({ id: "s", type: "split", config: { rules: [{ branch: "vip", expression: "true" }] } }),
    ).toEqual(["vip", "default"]);
    expect(
      branchesOf({
        id: "s",
        type: "split",
        config: { variants: [{ branch: "a", percent: 50 }, { branch: "b", percent: 50 }] },
      }),
    ).toEqual(["a", "b"]);
  });
});

describe("edits", () => {
  it("connect replaces what an exit led to, and never loops a node to itself", () => {
    let d = connect(doc(), "wait", "start", "event");
    expect(d.edges.filter((e) => e.from === "wait")).toEqual([{ from: "wait", to: "start", branch: "event" }]);
    d = connect(d, "wait", "done", "timeout");
    expect(d.edges).toHaveLength(3);
    expect(connect(d, "wait", "wait", "event")).toBe(d);
    // An unlabelled exit has no branch field.
    expect(connect(doc(), "start", "done", null).edges.at(-1)).toEqual({ from: "start", to: "done" });
  });

  it("removing a node removes its edges", () => {
    const d = removeNodes(doc(), new Set(["wait"]));
    expect(d.nodes.map((n) => n.id)).toEqual(["start", "done"]);
    expect(d.edges).toEqual([]);
  });

  it("an exit that goes away leaves its edge listed as an orphan", () => {
    // The timeout cleared (as while typing a new one): the edge stays, listed.
    let d = connect(doc(), "wait", "start", "timeout");
    d = updateNode(d, "wait", { id: "wait", type: "wait_for_event", config: { event: "paid" } });
    expect(d.edges).toHaveLength(3);
    expect([...orphanEdges(d)].map((i) => d.edges[i])).toEqual([{ from: "wait", to: "start", branch: "timeout" }]);
    // Typed again: the same edge, no longer an orphan.
    d = updateNode(d, "wait", { id: "wait", type: "wait_for_event", config: { event: "paid", timeout: "2d" } });
    expect(orphanEdges(d).size).toBe(0);
  });

  it("a renamed split branch keeps its edge", () => {
    const split = (names: string[], key: "variants" | "rules" = "variants"): WfNode => ({
      id: "s",
      type: "split",
      config: { [key]: names.map((b) => (key === "variants" ? { branch: b, percent: 100 / names.length } : { branch: b, expression: "true" })) },
    });
    let d: WfDoc = {
      nodes: [split(["a", "b"]), { id: "x", type: "exit" }, { id: "y", type: "exit" }],
      edges: [
        { from: "s", to: "x", branch: "a" },
        { from: "s", to: "y", branch: "b" },
      ],
    };
    d = updateNode(d, "s", split(["ab", "b"]));
    expect(d.edges[0]).toEqual({ from: "s", to: "x", branch: "ab" });
    // Reordered: each branch keeps where it leads.
    d = updateNode(d, "s", split(["b", "ab"]));
    expect(d.edges).toEqual([
      { from: "s", to: "x", branch: "ab" },
      { from: "s", to: "y", branch: "b" },
    ]);
    d = updateNode(d, "s", split(["ab", "b", "c"]));
    expect(d.edges.map((e) => e.branch)).toEqual(["ab", "b"]);
    // Rules instead: named in order, then `default`.
    d = updateNode(d, "s", split(["vip", "b"], "rules"));
    expect(d.edges.map((e) => e.branch)).toEqual(["ab", "b"]);
    expect([...orphanEdges(d)]).toEqual([0]);
  });

  it("a stored draft is read leniently, and what cannot be drawn is kept aside", () => {
    const raw = {
      nodes: [null, { id: "a", type: "delay", position: { x: "1" } }, { id: 2, type: "exit" }, { id: "b", type: "exit" }],
      edges: [null, { from: "a" }, { from: "a", to: "b", branch: 4 }, { from: "a", to: "b", branch: null }],
    };
    const { doc: d, aside } = readDraft(raw);
    expect(d.nodes).toEqual([
      { id: "a", type: "delay", position: undefined },
      { id: "b", type: "exit" },
    ]);
    expect(d.edges).toEqual([{ from: "a", to: "b" }]);
    expect(aside).toEqual({ nodes: [null, { id: 2, type: "exit" }], edges: [null, { from: "a" }, { from: "a", to: "b", branch: 4 }] });
    // Written back with the builder's document.
    expect(withAside(d, aside).nodes).toHaveLength(4);
    expect(withAside(d, aside).edges).toHaveLength(4);
    expect(readDraft("nonsense").doc).toEqual({ nodes: [], edges: [] });
  });

  it("renaming a node renames its edges", () => {
    const d = updateNode(doc(), "wait", { id: "wait_paid", type: "wait_for_event", config: { event: "paid" } });
    expect(d.edges).toEqual([
      { from: "start", to: "wait_paid" },
      { from: "wait_paid", to: "done", branch: "event" },
    ]);
  });

  it("fresh ids do not collide", () => {
    const d = doc();
    expect(freshId(d, "delay")).toBe("delay");
    expect(freshId(d, "wait")).toBe("wait_2");
    expect(freshId(d, "email.send")).toBe("email_send");
  });
});

describe("history", () => {
  it("undoes and redoes, and a new edit drops the redo list", () => {
    const a = doc();
    const b = removeNodes(a, new Set(["done"]));
    const c = removeNodes(b, new Set(["wait"]));
    let h = record(record(historyOf(a), b), c);
    h = undo(h);
    expect(h.present).toBe(b);
    h = undo(h);
    expect(h.present).toBe(a);
    expect(undo(h)).toBe(h);
    h = redo(h);
    expect(h.present).toBe(b);
    const d = removeNodes(b, new Set(["start"]));
    h = record(h, d);
    expect(h.future).toEqual([]);
    expect(redo(h)).toBe(h);
    expect(record(h, h.present)).toBe(h);
  });
});

describe("layout", () => {
  it("places nodes without a position in layers below their parents", () => {
    const p = layout(doc());
    expect(p.get("start")!.y).toBeLessThan(p.get("wait")!.y);
    expect(p.get("wait")!.y).toBeLessThan(p.get("done")!.y);
  });

  it("keeps given positions", () => {
    const d = doc();
    d.nodes[0].position = { x: 7, y: 9 };
    const p = layout(d);
    expect(p.get("start")).toEqual({ x: 7, y: 9 });
    expect(p.get("wait")!.y).toBeGreaterThan(0);
  });

  it("puts a loop and what follows it below the node that leads into it", () => {
    const d: WfDoc = {
      nodes: ["start", "a", "b", "c"].map((id) => ({ id, type: "delay" })),
      edges: [
        { from: "start", to: "a" },
        { from: "a", to: "b" },
        { from: "b", to: "a" },
        { from: "b", to: "c" },
      ],
    };
    const y = (id: string) => layout(d).get(id)!.y;
    expect(y("start")).toBeLessThan(y("a"));
    expect(y("a")).toBeLessThan(y("b"));
    expect(y("b")).toBeLessThan(y("c"));
  });

  it("gives 200 nodes each a place of their own", () => {
    const nodes = Array.from({ length: 200 }, (_, i) => ({ id: `n${i}`, type: "delay" }));
    const edges = nodes.slice(1).map((n, i) => ({ from: `n${Math.floor(i / 2)}`, to: n.id }));
    const p = layout({ nodes, edges });
    const seen = new Set([...p.values()].map((q) => `${q.x},${q.y}`));
    expect(seen.size).toBe(200);
  });
});

describe("problems", () => {
  it("are placed on nodes, edges and the document, and nested for forms", () => {
    const problems = [
      { node: "send", field: "config.inputs.to", message: "required" },
      { node: "send", field: "config.retry.max_attempts", message: "too many" },
      { node: "send", field: "config.assign[1].var", message: "bad name" },
      { edge: 2, field: "edges[2].to", message: "no such node" },
      { field: "settings.timezone", message: "unknown zone" },
    ];
    const placed = problemsByPlace(problems);
    expect(placed.nodes.get("send")).toHaveLength(3);
    expect(placed.edges.get(2)).toHaveLength(1);
    expect(placed.document).toHaveLength(1);
    expect(formErrors(placed.nodes.get("send")!)).toEqual({
      inputs: { to: { __errors: ["required"] } },
      retry: { max_attempts: { __errors: ["too many"] } },
      assign: { "1": { var: { __errors: ["bad name"] } } },
    });
  });
});

describe("diff helpers", () => {
  it("compare documents regardless of key order and layout", () => {
    const a = doc();
    const b = { ...doc(), nodes: doc().nodes.map((n) => ({ config: n.config, type: n.type, id: n.id, position: { x: 1, y: 2 } })) };
    expect(stableJson(withoutLayout(a))).toBe(stableJson(withoutLayout(b)));
  });
});

describe("syntax help", () => {
  it("knows CEL fields from template fields", () => {
    expect(isCelField("expression")).toBe(true);
    expect(isCelField("condition")).toBe(true);
    expect(isCelField("key")).toBe(true);
    expect(isCelField("inputs.subject")).toBe(false);
    expect(isCelField("inputs.body.$expr")).toBe(true);
    expect(syntaxHelp("inputs.to", "{{ input.email }}")).toMatch(/^Template/);
    expect(syntaxHelp("inputs.to", "{{ input.email }")).toMatch(/not closed/);
    expect(syntaxHelp("inputs.to", "plain")).toBeNull();
  });
});
