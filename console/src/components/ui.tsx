import type { ReactNode } from "react";
import { ApiProblem } from "../api/client";
import { formatTime, relative } from "../lib/time";

/** What went wrong, in words (the API's message names the field). */
export function ErrorNote({ error }: { error: unknown }) {
  if (!error) return null;
  let text = error instanceof Error ? error.message : String(error);
  if (error instanceof ApiProblem) {
    if (error.status === 403) text = `Not allowed: ${text}`;
    else if (error.status === 503) text = `Sojourn is not ready: ${text}`;
  }
  return (
    <div className="alert" role="alert">
      {text}
    </div>
  );
}

export function Empty({ children }: { children: ReactNode }) {
  return <div className="empty">{children}</div>;
}

export function Loading({ what }: { what: string }) {
  return <p className="muted">Loading {what}…</p>;
}

export function Badge({ value, kind }: { value: string; kind?: string }) {
  return <span className={`badge ${kind ?? value}`}>{value}</span>;
}

/** A date in the viewer's zone (zone named), with the relative time on hover. */
export function Time({ at }: { at: string | null | undefined }) {
  if (!at) return <span className="muted">—</span>;
  return (
    <time dateTime={at} title={relative(at)}>
      {formatTime(at)}
    </time>
  );
}

/** Each query's three states in one place. */
export function Query<T>({
  q,
  what,
  children,
}: {
  q: { data?: T; error: unknown; isPending: boolean };
  what: string;
  children: (data: T) => ReactNode;
}) {
  if (q.error) return <ErrorNote error={q.error} />;
  if (q.isPending || q.data === undefined) return <Loading what={what} />;
  return <>{children(q.data)}</>;
}

export function percent(x: number | null | undefined, digits = 1): string {
  return x === null || x === undefined ? "—" : `${(x * 100).toFixed(digits)} %`;
}
