import { useState } from "react";
import { Link } from "react-router";
import { useInfiniteQuery, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { client, unwrap, type Schemas } from "../api/client";
import { Badge, Empty, ErrorNote, Query, Time } from "../components/ui";
import { DeliveriesTable } from "../components/pickers";

export function Audience() {
  const [tab, setTab] = useState<"profiles" | "segments" | "suppressions">("profiles");
  return (
    <div>
      <h1>Audience</h1>
      <div className="tabs" role="tablist">
        {(["profiles", "segments", "suppressions"] as const).map((t) => (
          <button key={t} role="tab" aria-selected={tab === t} className={tab === t ? "on" : ""} onClick={() => setTab(t)}>
            {t[0].toUpperCase() + t.slice(1)}
          </button>
        ))}
      </div>
      {tab === "profiles" && <Profiles />}
      {tab === "segments" && <Segments />}
      {tab === "suppressions" && <Suppressions />}
    </div>
  );
}

function Profiles() {
  const [subject, setSubject] = useState("");
  const [shown, setShown] = useState<string | null>(null);
  const list = useInfiniteQuery({
    queryKey: ["profiles"],
    initialPageParam: undefined as string | undefined,
    queryFn: ({ pageParam }) => unwrap(client.GET("/v1/profiles", { params: { query: { cursor: pageParam, limit: 50 } } })),
    getNextPageParam: (last) => last.next_cursor ?? undefined,
  });
  const items = (list.data?.pages ?? []).flatMap((p) => p.items);
  return (
    <div>
      <form
        className="filters card"
        role="search"
        onSubmit={(e) => {
          e.preventDefault();
          setShown(subject.trim() || null);
        }}
      >
        <label>
          Subject
          <input value={subject} onChange={(e) => setSubject(e.target.value)} placeholder="user-42" aria-label="Profile subject" />
        </label>
        <button className="primary">Find</button>
      </form>
      {shown && <Profile subject={shown} />}
      <h2>Profiles</h2>
      <ErrorNote error={list.error} />
      {items.length === 0 && !list.isPending ? (
        <Empty>No profiles yet. Write them with `POST /v1/profiles/&#123;subject&#125;` or in batches.</Empty>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Subject</th>
              <th>Email</th>
              <th>Phone</th>
              <th>Segments</th>
              <th>Updated</th>
            </tr>
          </thead>
          <tbody>
            {items.map((p) => (
              <tr key={p.subject}>
                <td>
                  <button className="link" onClick={() => setShown(p.subject)}>
                    {p.subject}
                  </button>
                </td>
                <td>{p.addresses.email ?? "—"}</td>
                <td>{p.addresses.phone ?? "—"}</td>
                <td>{(p.segments ?? []).join(", ") || "—"}</td>
                <td>
                  <Time at={p.updated_at} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {list.hasNextPage && <button onClick={() => list.fetchNextPage()}>Load more</button>}
    </div>
  );
}

function Profile({ subject }: { subject: string }) {
  const p = useQuery({
    queryKey: ["profile", subject],
    queryFn: () => unwrap(client.GET("/v1/profiles/{subject}", { params: { path: { subject } } })),
  });
  const executions = useQuery({
    queryKey: ["profile-executions", subject],
    queryFn: () => unwrap(client.GET("/v1/executions", { params: { query: { subject, limit: 20 } } })),
  });
  const deliveries = useQuery({
    queryKey: ["profile-deliveries", subject],
    queryFn: () => unwrap(client.GET("/v1/deliveries", { params: { query: { subject, limit: 50 } } })),
  });
  return (
    <section className="card" style={{ marginBottom: 12 }}>
      <Query q={p} what="the profile">
        {(p) => (
          <div>
            <h2 style={{ marginTop: 0 }}>{p.subject}</h2>
            <div className="grid" style={{ gridTemplateColumns: "1fr 1fr 1fr" }}>
              <div>
                <h3>Addresses</h3>
                <div>email: {p.addresses.email ?? "—"}</div>
                <div>phone: {p.addresses.phone ?? "—"}</div>
                <div>chat: {p.addresses.chat ?? "—"}</div>
                <div>push: {p.addresses.push.length} device(s)</div>
                <div className="muted">
                  {p.locale ?? "no locale"} · {p.timezone ?? "no time zone"}
                </div>
              </div>
              <div>
                <h3>Preferences</h3>
                {p.preferences.opted_out ? <Badge value="opted out of marketing" kind="bad" /> : <Badge value="receives marketing" kind="ok" />}
                <div>
                  channels:{" "}
                  {Object.entries(p.preferences.channels)
                    .map(([c, on]) => `${c} ${on ? "on" : "off"}`)
                    .join(", ") || "all on"}
                </div>
                <div>
                  categories:{" "}
                  {Object.entries(p.preferences.categories)
                    .map(([c, on]) => `${c} ${on ? "on" : "off"}`)
                    .join(", ") || "all on"}
                </div>
                <div>segments: {(p.segments ?? []).join(", ") || "none"}</div>
              </div>
              <div>
                <h3>Attributes</h3>
                <pre>{JSON.stringify(p.attributes, null, 2)}</pre>
              </div>
            </div>
          </div>
        )}
      </Query>
      <h3>Messages to this subject</h3>
      <Query q={deliveries} what="deliveries">
        {(page) =>
          page.items.length === 0 ? (
            <p className="muted">No message was sent to this subject.</p>
          ) : (
            <DeliveriesTable
              items={page.items}
              label="Messages to this subject"
              extra={page.next_cursor && <p className="hint">The newest {page.items.length}; the execution pages show the rest.</p>}
            />
          )
        }
      </Query>
      <h3>Journeys of this subject</h3>
      <Query q={executions} what="executions">
        {(page) =>
          page.items.length === 0 ? (
            <p className="muted">No execution has this subject.</p>
          ) : (
            <ul>
              {page.items.map((e) => (
                <li key={e.id}>
                  <Link to={`/executions/${e.id}`} className="mono">
                    {e.id}
                  </Link>{" "}
                  <Badge value={e.status} /> <Time at={e.created_at} />
                </li>
              ))}
            </ul>
          )
        }
      </Query>
    </section>
  );
}

function Segments() {
  const q = useQuery({ queryKey: ["segments"], queryFn: () => unwrap(client.GET("/v1/segments")), refetchInterval: 10_000 });
  return (
    <Query q={q} what="segments">
      {(segs) =>
        segs.length === 0 ? (
          <Empty>No segments. Define one with `PUT /v1/segments/&#123;name&#125;` and a CEL expression over profiles.</Empty>
        ) : (
          <table>
            <thead>
              <tr>
                <th>Segment</th>
                <th>Expression</th>
                <th>Members</th>
                <th>Updated</th>
              </tr>
            </thead>
            <tbody>
              {segs.map((s) => (
                <tr key={s.name}>
                  <td>{s.name}</td>
                  <td>
                    <code>{s.expression ?? "(listed members)"}</code>
                  </td>
                  <td>
                    {s.members.toLocaleString()} {s.backfilling && <Badge value="counting…" kind="warn" />}
                  </td>
                  <td>
                    <Time at={s.updated_at} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )
      }
    </Query>
  );
}

function Suppressions() {
  const queries = useQueryClient();
  const [channel, setChannel] = useState("email");
  const [address, setAddress] = useState("");
  const list = useInfiniteQuery({
    queryKey: ["suppressions"],
    initialPageParam: undefined as string | undefined,
    queryFn: ({ pageParam }) => unwrap(client.GET("/v1/suppressions", { params: { query: { cursor: pageParam, limit: 100 } } })),
    getNextPageParam: (last) => last.next_cursor ?? undefined,
  });
  const add = useMutation({
    mutationFn: () => unwrap(client.POST("/v1/suppressions", { body: { channel: channel as "email" | "sms", address } })),
    onSuccess: () => {
      setAddress("");
      queries.invalidateQueries({ queryKey: ["suppressions"] });
    },
  });
  const remove = useMutation({
    mutationFn: (s: Schemas["SuppressionOut"]) => unwrap(client.DELETE("/v1/suppressions", { params: { query: { channel: s.channel as "email", address: s.address } } })),
    onSuccess: () => queries.invalidateQueries({ queryKey: ["suppressions"] }),
  });
  const items = (list.data?.pages ?? []).flatMap((p) => p.items);
  return (
    <div>
      <form
        className="filters card"
        onSubmit={(e) => {
          e.preventDefault();
          add.mutate();
        }}
      >
        <label>
          Channel
          <select value={channel} onChange={(e) => setChannel(e.target.value)}>
            <option>email</option>
            <option>sms</option>
          </select>
        </label>
        <label>
          Address
          <input value={address} onChange={(e) => setAddress(e.target.value)} placeholder="someone@example.com" required />
        </label>
        <button className="primary" disabled={add.isPending}>
          Suppress
        </button>
      </form>
      <ErrorNote error={add.error ?? remove.error ?? list.error} />
      {items.length === 0 && !list.isPending ? (
        <Empty>The suppression list is empty: bounces, complaints and unsubscribes land here.</Empty>
      ) : (
        <table>
          <thead>
            <tr>
              <th>Channel</th>
              <th>Address</th>
              <th>Reason</th>
              <th>Since</th>
              <th></th>
            </tr>
          </thead>
          <tbody>
            {items.map((s) => (
              <tr key={s.channel + s.address}>
                <td>{s.channel}</td>
                <td>{s.address}</td>
                <td>
                  {s.reason} {s.detail && <span className="muted">{s.detail}</span>}
                </td>
                <td>
                  <Time at={s.created_at} />
                </td>
                <td>
                  <button className="danger" onClick={() => remove.mutate(s)}>
                    Remove
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {list.hasNextPage && <button onClick={() => list.fetchNextPage()}>Load more</button>}
    </div>
  );
}
