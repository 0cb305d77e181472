import type { ReactNode } from "react";
import { Link } from "react-router";
import { useWorkflows } from "../api/hooks";
import type { Schemas } from "../api/client";
import { Badge, Time } from "./ui";

/** A workflow chosen by key, with an optional first choice (`any`, `choose…`). */
export function WorkflowSelect({
  value,
  onChange,
  label,
  empty,
  archived = false,
  required = false,
}: {
  value: string;
  onChange: (key: string) => void;
  label: string;
  /** The choice for none, when there is one. */
  empty?: string;
  archived?: boolean;
  required?: boolean;
}) {
  const workflows = useWorkflows(archived);
  return (
    <label>
      Workflow
      <select value={value} onChange={(e) => onChange(e.target.value)} aria-label={label} required={required}>
        {empty !== undefined && <option value="">{empty}</option>}
        {(workflows.data ?? []).map((w) => (
          <option key={w.id} value={w.key}>
            {w.key}
          </option>
        ))}
      </select>
    </label>
  );
}

/** A list of deliveries: when, channel and provider, to whom, from which node, status. */
export function DeliveriesTable({ items, label, extra }: { items: Schemas["DeliveryOut"][]; label: string; extra?: ReactNode }) {
  return (
    <>
      {extra}
      <table aria-label={label}>
        <thead>
          <tr>
            <th>At</th>
            <th>Channel</th>
            <th>To</th>
            <th>Node</th>
            <th>Status</th>
          </tr>
        </thead>
        <tbody>
          {items.map((d) => (
            <tr key={d.id}>
              <td>
                <Time at={d.created_at} />
              </td>
              <td>
                {d.channel} <span className="muted">{d.provider}</span>
              </td>
              <td>{d.recipient}</td>
              <td>
                <Link to={`/executions/${d.execution_id}`}>{d.node}</Link>
              </td>
              <td>
                <Badge value={d.status} />
                {d.error && <div className="error">{d.error}</div>}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}

/** The server's problems with a document, each with its node and field. */
export function ProblemList({ problems }: { problems: { node?: string | null; field: string; message: string }[] }) {
  if (problems.length === 0) return null;
  return (
    <ul className="error" aria-label="Problems">
      {problems.map((p) => (
        <li key={(p.node ?? "") + p.field + p.message}>
          {p.node ? `${p.node}: ` : ""}
          {p.field ? `${p.field}: ` : ""}
          {p.message}
        </li>
      ))}
    </ul>
  );
}
