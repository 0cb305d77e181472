// One node of a journey on the canvas: its type, id and name, what the
// page says about it (problems, a preview's or an execution's visit, counts),
// an entry handle on top and one exit handle per branch below.
import { memo } from "react";
import { Handle, Position, type Node, type NodeProps } from "@xyflow/react";
import { NODE_TITLES, type WfNode } from "../lib/graph";

export interface JourneyNodeData extends Record<string, unknown> {
  node: WfNode;
  /** `[null]`: one unlabelled exit. */
  branches: (string | null)[];
  problems?: string[];
  /** Walked by the execution or preview shown. */
  visited?: boolean;
  /** Where the execution is now. */
  current?: boolean;
  /** A line under the title: counts, a preview's time. */
  note?: string;
}

export type JourneyFlowNode = Node<JourneyNodeData, "journey">;

function subtitle(n: WfNode): string {
  const c = (n.config ?? {}) as Record<string, unknown>;
  switch (n.type) {
    case "action":
      return String(c.action ?? "");
    case "delay":
      return String(c.duration ?? c.until ?? c.time_of_day ?? "");
    case "wait_for_event":
      return c.event ? `for “${String(c.event)}”${c.timeout ? ` ≤ ${String(c.timeout)}` : ""}` : "";
    case "condition":
      return String(c.expression ?? "");
    case "exit":
      return c.outcome ? `outcome: ${String(c.outcome)}` : "";
    default:
      return "";
  }
}

export const JourneyNode = memo(function JourneyNode({ data, selected }: NodeProps<JourneyFlowNode>) {
  const { node, branches, problems, visited, current, note } = data;
  const cls = ["wf-node", selected ? "selected" : "", problems?.length ? "invalid" : "", visited ? "visited" : "", current ? "current" : ""]
    .filter(Boolean)
    .join(" ");
  const sub = subtitle(node);
  return (
    <div className={cls} data-node-id={node.id} aria-invalid={problems?.length ? true : undefined}>
      {node.type !== "start" && <Handle type="target" position={Position.Top} id="in" />}
      <div className="t">{NODE_TITLES[node.type] ?? node.type}</div>
      <div className="id">{node.name || node.id}</div>
      {sub && (
        <div className="muted" style={{ overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap" }} title={sub}>
          {sub}
        </div>
      )}
      {note && <div className="count">{note}</div>}
      {problems?.slice(0, 2).map((p) => (
        <div className="problem" key={p}>
          {p}
        </div>
      ))}
      {branches.length > 1 || (branches.length === 1 && branches[0] !== null) ? (
        <div className="handles">
          {branches.map((b) => (
            <span key={b ?? "next"}>{b}</span>
          ))}
        </div>
      ) : null}
      {branches.map((b, i) => (
        <Handle
          key={b ?? "next"}
          type="source"
          position={Position.Bottom}
          id={b ?? "next"}
          title={b ?? "next"}
          style={{ left: `${((i + 1) / (branches.length + 1)) * 100}%` }}
        />
      ))}
    </div>
  );
});

export const nodeTypes = { journey: JourneyNode };
