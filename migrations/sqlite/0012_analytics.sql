-- Analytics: counts rolled up from the journal by the rollup job (never
-- written on an execution's path), per namespace, workflow, UTC day and
-- hour (a day in another time zone is the sum of its hours), version,
-- node ('' for the journey, or the node a failure stopped at), branch (the
-- branch taken, the outcome, the exit criterion's event),
-- channel and provider, and metric. Append-only: never edit once landed.
CREATE TABLE analytics_daily (
    namespace   TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    day         TEXT NOT NULL,               -- YYYY-MM-DD, UTC
    hour        INTEGER NOT NULL,            -- 0 to 23, UTC
    version     INTEGER NOT NULL,
    node        TEXT NOT NULL,               -- '' for the journey (a failure: its node)
    branch      TEXT NOT NULL,               -- '' when none
    channel     TEXT NOT NULL,               -- '' when none
    provider    TEXT NOT NULL,               -- '' when none
    metric      TEXT NOT NULL,
    value       INTEGER NOT NULL,
    PRIMARY KEY (namespace, workflow_id, day, hour, version, node, branch, channel, provider, metric)
);

-- How far each source has been rolled up: `position`, the last journal id
-- counted. PostgreSQL hands out ids before commit, so an id is counted only
-- once every transaction that could still write a lower one has ended: a
-- run reads the highest id it sees, then takes an xid of its own
-- (`pending_upto`, `pending_xid`); once the oldest running transaction is
-- past that xid, everything up to `pending_upto` is committed or gone
-- (`safe_upto`). SQLite has one writer: what it sees is settled. The row is
-- also the job's claim: a node rolls up while it holds the row's lock.
CREATE TABLE analytics_cursors (
    source       TEXT PRIMARY KEY,
    position     INTEGER NOT NULL,
    safe_upto    INTEGER NOT NULL,
    pending_upto INTEGER,
    pending_xid INTEGER,
    updated_at   INTEGER NOT NULL
);
INSERT INTO analytics_cursors (source, position, safe_upto, updated_at) VALUES ('journal', 0, 0, 0);
