-- The delivery log: one row per send attempt of a channel message to one
-- provider (an attempt that fails over leaves one row per provider tried).
-- Written by the channel workers with the attempt's result; the status
-- moves on (delivered, bounced, opened, …) when a provider reports it.
CREATE TABLE deliveries (
    id                  TEXT PRIMARY KEY,          -- dlv_… (UUIDv7: sorts by time)
    namespace           TEXT NOT NULL,
    workflow_id         TEXT NOT NULL,
    execution_id        TEXT NOT NULL,
    node                TEXT NOT NULL,
    attempt             INTEGER NOT NULL,
    idempotency_key     TEXT NOT NULL,
    channel             TEXT NOT NULL,
    provider            TEXT NOT NULL,
    recipient           TEXT NOT NULL,
    status              TEXT NOT NULL,             -- queued, sent, failed, delivered, bounced, …
    provider_message_id TEXT,
    error_class         TEXT,
    error               TEXT,
    created_at          TIMESTAMPTZ NOT NULL,      -- when the send began
    duration_ms         BIGINT NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);
-- A re-send of the same attempt to the same provider (after a crash before
-- its result was recorded) updates the row rather than adding one.
CREATE UNIQUE INDEX deliveries_attempt ON deliveries (idempotency_key, provider);
CREATE INDEX deliveries_by_namespace ON deliveries (namespace, id);
CREATE INDEX deliveries_by_execution ON deliveries (execution_id, id);
CREATE INDEX deliveries_by_workflow ON deliveries (namespace, workflow_id, id);
CREATE INDEX deliveries_by_message ON deliveries (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
