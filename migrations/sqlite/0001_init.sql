-- Sojourn's first schema (SQLite, the embedded `sojourn dev` store).
-- Append-only: never edit once landed. Instants are INTEGER milliseconds
-- since the Unix epoch (they sort and compare as numbers); JSON is TEXT.

CREATE TABLE workflows (
    id             TEXT PRIMARY KEY,
    namespace      TEXT NOT NULL DEFAULT 'default',
    key            TEXT NOT NULL,
    name           TEXT,
    draft          TEXT NOT NULL,
    latest_version INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    archived_at    INTEGER,
    UNIQUE (namespace, key)
);

CREATE TABLE workflow_versions (
    workflow_id  TEXT NOT NULL REFERENCES workflows (id),
    version      INTEGER NOT NULL,
    definition   TEXT NOT NULL,
    published_at INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE executions (
    id              TEXT PRIMARY KEY,
    namespace       TEXT NOT NULL DEFAULT 'default',
    workflow_id     TEXT NOT NULL,
    version         INTEGER NOT NULL,
    status          TEXT NOT NULL,
    subject         TEXT,
    idempotency_key TEXT,
    current_node    TEXT,
    snapshot        TEXT NOT NULL,
    snapshot_seq    INTEGER NOT NULL,
    lease_epoch     INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER,
    FOREIGN KEY (workflow_id, version) REFERENCES workflow_versions (workflow_id, version)
);
CREATE UNIQUE INDEX executions_idempotency ON executions (workflow_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX executions_by_workflow ON executions (namespace, workflow_id, status, created_at);
CREATE INDEX executions_by_subject ON executions (workflow_id, subject) WHERE subject IS NOT NULL;
CREATE INDEX executions_pending ON executions (created_at) WHERE status = 'pending';

CREATE TABLE journal (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    entry        TEXT NOT NULL
);
CREATE INDEX journal_by_execution ON journal (execution_id, id);

CREATE TABLE node_executions (
    execution_id TEXT NOT NULL,
    node_id      TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    action       TEXT NOT NULL,
    status       TEXT NOT NULL,
    sends        INTEGER NOT NULL DEFAULT 0,
    input        TEXT NOT NULL,
    output       TEXT,
    error        TEXT,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    PRIMARY KEY (execution_id, node_id, attempt)
);

CREATE TABLE timers (
    execution_id  TEXT NOT NULL,
    timer_id      TEXT NOT NULL,
    due_at        INTEGER NOT NULL,
    claimed_by    TEXT,
    claimed_until INTEGER,
    PRIMARY KEY (execution_id, timer_id)
);
CREATE INDEX timers_by_due ON timers (due_at);

CREATE TABLE subscriptions (
    execution_id    TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    namespace       TEXT NOT NULL DEFAULT 'default',
    event           TEXT NOT NULL,
    key             TEXT,
    PRIMARY KEY (execution_id, subscription_id)
);
CREATE INDEX subscriptions_by_event ON subscriptions (namespace, event, key);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id    TEXT NOT NULL,
    node_id         TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    action          TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    claimed_by      TEXT,
    claimed_until   INTEGER,
    deliveries      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_by_claim ON outbox (claimed_until, id);

CREATE TABLE inbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id TEXT NOT NULL,
    input        TEXT NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX inbox_by_execution ON inbox (execution_id, id);
