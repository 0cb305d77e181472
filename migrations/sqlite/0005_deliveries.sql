-- See migrations/postgres/0005_deliveries.sql.
CREATE TABLE deliveries (
    id                  TEXT PRIMARY KEY,
    namespace           TEXT NOT NULL,
    workflow_id         TEXT NOT NULL,
    execution_id        TEXT NOT NULL,
    node                TEXT NOT NULL,
    attempt             INTEGER NOT NULL,
    idempotency_key     TEXT NOT NULL,
    channel             TEXT NOT NULL,
    provider            TEXT NOT NULL,
    recipient           TEXT NOT NULL,
    status              TEXT NOT NULL,
    provider_message_id TEXT,
    error_class         TEXT,
    error               TEXT,
    created_at          INTEGER NOT NULL,
    duration_ms         INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE UNIQUE INDEX deliveries_attempt ON deliveries (idempotency_key, provider);
CREATE INDEX deliveries_by_namespace ON deliveries (namespace, id);
CREATE INDEX deliveries_by_execution ON deliveries (execution_id, id);
CREATE INDEX deliveries_by_workflow ON deliveries (namespace, workflow_id, id);
CREATE INDEX deliveries_by_message ON deliveries (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
