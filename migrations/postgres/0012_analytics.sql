-- Analytics: counts rolled up from the journal by the rollup job (never
-- written on an execution's path), per namespace, workflow, UTC day and
-- hour (a day in another time zone is the sum of its hours), version,
-- node, branch (the branch taken, the outcome, the exit criterion's event),
-- channel and provider, and metric. The rollups stay when the journal of
-- finished executions is swept. Append-only: never edit once landed.
CREATE TABLE analytics_daily (
    namespace   TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    day         TEXT NOT NULL,               -- YYYY-MM-DD, UTC
    hour        INTEGER NOT NULL,            -- 0 to 23, UTC
    version     INTEGER NOT NULL,
    node        TEXT NOT NULL,               -- '' for the journey as a whole
    branch      TEXT NOT NULL,               -- '' when none
    channel     TEXT NOT NULL,               -- '' when none
    provider    TEXT NOT NULL,               -- '' when none
    metric      TEXT NOT NULL,
    value       BIGINT NOT NULL,
    PRIMARY KEY (namespace, workflow_id, day, hour, version, node, branch, channel, provider, metric)
);

-- How far each source has been rolled up: the last journal id counted. The
-- row is also the job's claim: a node rolls up while it holds the row's lock.
CREATE TABLE analytics_cursors (
    source     TEXT PRIMARY KEY,
    position   BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
INSERT INTO analytics_cursors (source, position, updated_at) VALUES ('journal', 0, now());
