// Server state through TanStack Query: one hook per thing the console
// reads, so pages share answers and refresh them together.
import { useQuery } from "@tanstack/react-query";
import { client, unwrap, type Schemas } from "./client";

export type Workflow = Schemas["WorkflowOut"];

/** Every workflow of the namespace (pages of 500 followed). */
export function useWorkflows(includeArchived = false) {
  return useQuery({
    queryKey: ["workflows", includeArchived],
    queryFn: async () => {
      const all: Workflow[] = [];
      let cursor: string | undefined;
      do {
        const page = await unwrap(
          client.GET("/v1/workflows", {
            params: { query: { limit: 500, cursor, include_archived: includeArchived } },
          }),
        );
        all.push(...page.items);
        cursor = page.next_cursor ?? undefined;
      } while (cursor);
      return all;
    },
  });
}

/** Workflow ids to keys, for lists that carry only the id. */
export function useWorkflowNames(): Map<string, string> {
  const q = useWorkflows(true);
  const m = new Map<string, string>();
  for (const w of q.data ?? []) m.set(w.id, w.key);
  return m;
}

export function useRegistry() {
  return useQuery({
    queryKey: ["registry"],
    queryFn: () => unwrap(client.GET("/v1/registry", { params: { query: {} } })),
    staleTime: 60_000,
  });
}

export function useWorkflowSchema() {
  return useQuery({
    queryKey: ["workflow-schema"],
    queryFn: () => unwrap(client.GET("/v1/schema/workflow")) as Promise<Record<string, unknown>>,
    staleTime: Infinity,
  });
}
