// A journey drawn read-only (the inspector, analytics): the document's
// nodes where the builder put them, decorated by the page.
import { useMemo } from "react";
import { Background, Controls, ReactFlow, type Edge } from "@xyflow/react";
import { branchesOf, layout, type WfDoc } from "../lib/graph";
import { nodeTypes, type JourneyFlowNode, type JourneyNodeData } from "./JourneyNode";

export function JourneyGraph({
  doc,
  decorate,
  edgeLabel,
  visitedEdges,
  height = 460,
}: {
  doc: WfDoc;
  decorate?: (id: string) => Partial<JourneyNodeData>;
  /** An edge's label (default: its branch). */
  edgeLabel?: (from: string, branch: string | null) => string | undefined;
  /** `from/branch` of edges taken. */
  visitedEdges?: Set<string>;
  height?: number;
}) {
  const { nodes, edges } = useMemo(() => {
    const at = layout(doc);
    const nodes: JourneyFlowNode[] = doc.nodes.map((n) => ({
      id: n.id,
      type: "journey",
      position: at.get(n.id) ?? { x: 0, y: 0 },
      data: { node: n, branches: branchesOf(n), ...(decorate?.(n.id) ?? {}) },
      draggable: false,
      connectable: false,
    }));
    const edges: Edge[] = doc.edges.map((e, i) => {
      const branch = e.branch ?? null;
      const taken = visitedEdges?.has(`${e.from}/${branch ?? ""}`);
      return {
        id: `e${i}`,
        source: e.from,
        target: e.to,
        sourceHandle: branch ?? "next",
        targetHandle: "in",
        label: edgeLabel ? edgeLabel(e.from, branch) : (branch ?? undefined),
        animated: taken,
        style: taken ? { stroke: "#18794e", strokeWidth: 2.5 } : undefined,
      };
    });
    return { nodes, edges };
  }, [doc, decorate, edgeLabel, visitedEdges]);
  return (
    <div className="canvas" style={{ height }}>
      <ReactFlow nodes={nodes} edges={edges} nodeTypes={nodeTypes} fitView nodesDraggable={false} nodesConnectable={false}>
        <Background />
        <Controls showInteractive={false} />
      </ReactFlow>
    </div>
  );
}
