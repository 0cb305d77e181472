-- Sojourn's first schema (PostgreSQL). Append-only: never edit once landed;
-- add a new numbered migration instead.

CREATE TABLE workflows (
    id           TEXT PRIMARY KEY,               -- wf_…
    namespace    TEXT NOT NULL DEFAULT 'default',
    key          TEXT NOT NULL,
    name         TEXT,
    draft        JSONB NOT NULL,                 -- the document being edited
    latest_version INTEGER,                      -- highest published version
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    archived_at  TIMESTAMPTZ,
    UNIQUE (namespace, key)
);

-- Published versions never change.
CREATE TABLE workflow_versions (
    workflow_id  TEXT NOT NULL REFERENCES workflows (id),
    version      INTEGER NOT NULL,
    definition   JSONB NOT NULL,
    published_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE executions (
    id              TEXT PRIMARY KEY,            -- exe_…
    namespace       TEXT NOT NULL DEFAULT 'default',
    workflow_id     TEXT NOT NULL,
    version         INTEGER NOT NULL,
    status          TEXT NOT NULL,
    subject         TEXT,
    idempotency_key TEXT,
    current_node    TEXT,
    snapshot        JSONB NOT NULL,
    snapshot_seq    BIGINT NOT NULL,
    lease_epoch     BIGINT NOT NULL DEFAULT 0,   -- fencing token (DESIGN invariant 1)
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ,
    FOREIGN KEY (workflow_id, version) REFERENCES workflow_versions (workflow_id, version)
);
CREATE UNIQUE INDEX executions_idempotency ON executions (workflow_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX executions_by_workflow ON executions (namespace, workflow_id, status, created_at);
CREATE INDEX executions_by_subject ON executions (workflow_id, subject) WHERE subject IS NOT NULL;
-- Executions created but not started yet (recovery after a crash).
CREATE INDEX executions_pending ON executions (created_at) WHERE status = 'pending';

-- Append-only record of every input and transition.
CREATE TABLE journal (
    id           BIGSERIAL PRIMARY KEY,
    execution_id TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    at           TIMESTAMPTZ NOT NULL,
    kind         TEXT NOT NULL,
    entry        JSONB NOT NULL
);
CREATE INDEX journal_by_execution ON journal (execution_id, id);

-- One row per action attempt: what was sent, what came back.
CREATE TABLE node_executions (
    execution_id    TEXT NOT NULL,
    node_id         TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    action          TEXT NOT NULL,
    status          TEXT NOT NULL,               -- dispatched | sending | succeeded | failed
    sends           INTEGER NOT NULL DEFAULT 0,  -- how many times a worker began sending it
    input           JSONB NOT NULL,
    output          JSONB,
    error           TEXT,
    started_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ,
    PRIMARY KEY (execution_id, node_id, attempt)
);

CREATE TABLE timers (
    execution_id  TEXT NOT NULL,
    timer_id      TEXT NOT NULL,
    due_at        TIMESTAMPTZ NOT NULL,
    claimed_by    TEXT,
    claimed_until TIMESTAMPTZ,
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

-- Actions to send, written with the transition that decided them.
CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    execution_id    TEXT NOT NULL,
    node_id         TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    action          TEXT NOT NULL,
    payload         JSONB NOT NULL,              -- the runtime's Dispatch
    created_at      TIMESTAMPTZ NOT NULL,
    claimed_by      TEXT,
    claimed_until   TIMESTAMPTZ,
    deliveries      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX outbox_by_claim ON outbox (claimed_until NULLS FIRST, id);

-- Inputs waiting for an execution's actor (durable delivery).
CREATE TABLE inbox (
    id           BIGSERIAL PRIMARY KEY,
    execution_id TEXT NOT NULL,
    input        JSONB NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX inbox_by_execution ON inbox (execution_id, id);
