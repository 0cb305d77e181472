import { Fragment, useState } from "react";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { client, unwrap } from "../api/client";
import { useRegistry } from "../api/hooks";
import { Badge, Empty, ErrorNote, Query, Time } from "../components/ui";

export function Registry() {
  const registry = useRegistry();
  const [open, setOpen] = useState<string | null>(null);
  const queries = useQueryClient();
  const toggle = useMutation({
    mutationFn: ({ name, enable }: { name: string; enable: boolean }) =>
      enable
        ? unwrap(client.POST("/v1/registry/{name}/enable", { params: { path: { name } } }))
        : unwrap(client.POST("/v1/registry/{name}/disable", { params: { path: { name } } })),
    onSuccess: () => queries.invalidateQueries({ queryKey: ["registry"] }),
  });
  return (
    <div>
      <h1>Registry</h1>
      <p className="muted">
        The actions and triggers workflows are built from. Add your own with <code>PUT /v1/registry/&#123;name&#125;</code> or{" "}
        <code>sojourn registry apply</code>; a disabled one cannot be used by new versions, and executions that reach it pause until it is enabled.
      </p>
      <ErrorNote error={toggle.error} />
      <Query q={registry} what="the registry">
        {(defs) =>
          defs.length === 0 ? (
            <Empty>Nothing registered.</Empty>
          ) : (
            <table>
              <thead>
                <tr>
                  <th>Name</th>
                  <th>Kind</th>
                  <th>Category</th>
                  <th>Version</th>
                  <th>State</th>
                  <th></th>
                </tr>
              </thead>
              <tbody>
                {defs.map((d) => (
                  <Fragment key={d.name}>
                    <tr>
                      <td>
                        <button className="link mono" onClick={() => setOpen(open === d.name ? null : d.name)} aria-expanded={open === d.name}>
                          {d.name}
                        </button>
                        <div className="muted">{d.definition.title}</div>
                      </td>
                      <td>{d.definition.kind}</td>
                      <td>{d.definition.category || "—"}</td>
                      <td>{d.builtin ? <Badge value="built in" /> : `v${d.version}`}</td>
                      <td>
                        <Badge value={d.enabled ? "enabled" : "disabled"} kind={d.enabled ? "ok" : "bad"} />
                      </td>
                      <td>
                        <button onClick={() => toggle.mutate({ name: d.name, enable: !d.enabled })} disabled={toggle.isPending}>
                          {d.enabled ? "Disable" : "Enable"}
                        </button>
                      </td>
                    </tr>
                    {open === d.name && (
                      <tr>
                        <td colSpan={6}>
                          <Detail name={d.name} />
                        </td>
                      </tr>
                    )}
                  </Fragment>
                ))}
              </tbody>
            </table>
          )
        }
      </Query>
    </div>
  );
}

function Detail({ name }: { name: string }) {
  const [version, setVersion] = useState<number | undefined>();
  const q = useQuery({
    queryKey: ["registry", name, version],
    queryFn: () => unwrap(client.GET("/v1/registry/{name}", { params: { path: { name }, query: { version } } })),
  });
  return (
    <Query q={q} what="the definition">
      {(d) => (
        <div>
          {d.definition.description && <p>{d.definition.description}</p>}
          {d.versions && d.versions.length > 0 && (
            <div className="row">
              Versions:
              {d.versions.map((v) => (
                <button key={v.version} onClick={() => setVersion(v.version)} className={v.version === d.version ? "primary" : ""} title={v.created_at}>
                  v{v.version} <Time at={v.created_at} />
                </button>
              ))}
            </div>
          )}
          <h3>Inputs (JSON Schema)</h3>
          <pre>{JSON.stringify(d.definition.inputs, null, 2)}</pre>
          {d.definition.output !== undefined && d.definition.output !== null && (
            <>
              <h3>Output</h3>
              <pre>{JSON.stringify(d.definition.output, null, 2)}</pre>
            </>
          )}
          {d.definition.run && (
            <>
              <h3>Runs as</h3>
              <pre>{JSON.stringify(d.definition.run, null, 2)}</pre>
            </>
          )}
        </div>
      )}
    </Query>
  );
}
