-- See migrations/postgres/0013_analytics_deliveries.sql.
ALTER TABLE deliveries ADD COLUMN rolled TEXT;
ALTER TABLE deliveries ADD COLUMN counted TEXT;
ALTER TABLE deliveries ADD COLUMN unsubscribed_at INTEGER;
CREATE INDEX deliveries_to_roll ON deliveries (id) WHERE rolled IS NULL OR rolled <> status;

CREATE TABLE workflow_goals (
    workflow_id    TEXT NOT NULL,
    version        INTEGER NOT NULL,
    namespace      TEXT NOT NULL,
    event          TEXT NOT NULL,
    within_seconds INTEGER NOT NULL,
    workflow_key   TEXT NOT NULL,
    holdout_below  INTEGER,
    PRIMARY KEY (workflow_id, version)
);
CREATE INDEX workflow_goals_by_event ON workflow_goals (namespace, event);

CREATE TABLE conversions (
    execution_id TEXT PRIMARY KEY,
    namespace    TEXT NOT NULL,
    workflow_id  TEXT NOT NULL,
    version      INTEGER NOT NULL,
    event        TEXT NOT NULL,
    holdout      BOOLEAN NOT NULL,
    path         TEXT NOT NULL,
    entered_at   INTEGER NOT NULL,
    converted_at INTEGER NOT NULL,
    rolled       BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX conversions_to_roll ON conversions (execution_id) WHERE NOT rolled;

CREATE TABLE retention_policies (
    namespace            TEXT PRIMARY KEY,
    journal_days         INTEGER,
    node_executions_days INTEGER,
    deliveries_days      INTEGER,
    updated_at           INTEGER NOT NULL
);
CREATE TABLE retention_cursors (
    namespace    TEXT NOT NULL,
    target       TEXT NOT NULL,
    finished_at  INTEGER NOT NULL,
    execution_id TEXT NOT NULL,
    PRIMARY KEY (namespace, target)
);
CREATE INDEX executions_finished ON executions (namespace, finished_at, id)
    WHERE finished_at IS NOT NULL;
INSERT INTO analytics_cursors (source, position, safe_upto, updated_at)
VALUES ('deliveries', 0, 0, 0), ('conversions', 0, 0, 0), ('retention', 0, 0, 0);
