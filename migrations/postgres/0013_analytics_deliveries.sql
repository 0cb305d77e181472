-- Analytics, second part: deliveries rolled up, conversion goals and
-- retention. Append-only: never edit once landed.

-- The status of a delivery the rollup last counted (NULL: not yet), and
-- the metrics counted of it (`sent,delivered`): the rollup adds what the
-- current status means that is not counted yet, each metric once per
-- delivery. Only rows still to count are in the index, so it stays small
-- (a status update now touches the indexes: no longer a HOT update).
ALTER TABLE deliveries ADD COLUMN rolled TEXT;
ALTER TABLE deliveries ADD COLUMN counted TEXT;
-- When the recipient unsubscribed through the message's link (it sets
-- `rolled` back to NULL, for the rollup to count it).
ALTER TABLE deliveries ADD COLUMN unsubscribed_at TIMESTAMPTZ;
CREATE INDEX deliveries_to_roll ON deliveries (id) WHERE rolled IS NULL OR rolled <> status;

-- A published version's conversion goal: an event (by the subject's key)
-- within a window after entry. Written when the version is published;
-- read when an event arrives.
CREATE TABLE workflow_goals (
    workflow_id    TEXT NOT NULL,
    version        INTEGER NOT NULL,
    namespace      TEXT NOT NULL,
    event          TEXT NOT NULL,
    within_seconds BIGINT NOT NULL,
    workflow_key   TEXT NOT NULL,
    holdout_below  INTEGER,                -- held out: a bucket (of 10,000) below this
    PRIMARY KEY (workflow_id, version)
);
CREATE INDEX workflow_goals_by_event ON workflow_goals (namespace, event);

-- An execution that reached its goal (once), with what it had done by
-- then: whether it was in the holdout, the branches it had taken
-- ([["node", "branch"], …]). `rolled`: counted into analytics_daily.
CREATE TABLE conversions (
    execution_id TEXT PRIMARY KEY,
    namespace    TEXT NOT NULL,
    workflow_id  TEXT NOT NULL,
    version      INTEGER NOT NULL,
    event        TEXT NOT NULL,
    holdout      BOOLEAN NOT NULL,
    path         JSONB NOT NULL,
    entered_at   TIMESTAMPTZ NOT NULL,
    converted_at TIMESTAMPTZ NOT NULL,
    rolled       BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX conversions_to_roll ON conversions (execution_id) WHERE NOT rolled;

-- How long a namespace keeps the journal, node executions and deliveries
-- of finished executions (NULL: for good). Analytics rollups are kept.
-- The sweeper goes through finished executions in order of finishing;
-- `*_swept_at`/`*_swept_id` is how far it has gone for each.
CREATE TABLE retention_policies (
    namespace            TEXT PRIMARY KEY,
    journal_days         INTEGER,
    node_executions_days INTEGER,
    deliveries_days      INTEGER,
    updated_at           TIMESTAMPTZ NOT NULL
);
CREATE TABLE retention_cursors (
    namespace    TEXT NOT NULL,
    target       TEXT NOT NULL,               -- journal, node_executions, deliveries
    finished_at  TIMESTAMPTZ NOT NULL,
    execution_id TEXT NOT NULL,
    PRIMARY KEY (namespace, target)
);
-- Finished executions of a namespace in the order they finished.
CREATE INDEX executions_finished ON executions (namespace, finished_at, id)
    WHERE finished_at IS NOT NULL;
-- The claims of the other rollups and of the sweep (made here, so that
-- the first claims skip a held row rather than wait on an insert).
INSERT INTO analytics_cursors (source, position, safe_upto, updated_at)
VALUES ('deliveries', 0, 0, now()), ('conversions', 0, 0, now()), ('retention', 0, 0, now());
