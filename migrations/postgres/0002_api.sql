-- API keys, trigger instances, and the indexes the listing API needs
-- (PostgreSQL). Append-only: never edit once landed.

-- Only the SHA-256 of a key's secret is kept.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,                -- key_…
    namespace   TEXT NOT NULL,
    name        TEXT,
    hash        TEXT NOT NULL,                   -- lowercase hex SHA-256 of the secret
    scopes      TEXT[] NOT NULL,                 -- read | write | admin
    created_at  TIMESTAMPTZ NOT NULL,
    revoked_at  TIMESTAMPTZ,
    CONSTRAINT api_keys_hash_unique UNIQUE (hash)
);
CREATE INDEX api_keys_by_namespace ON api_keys (namespace, created_at);

CREATE TABLE triggers (
    id          TEXT PRIMARY KEY,                -- trg_…
    namespace   TEXT NOT NULL,
    workflow_id TEXT NOT NULL REFERENCES workflows (id),
    kind        TEXT NOT NULL,                   -- api | schedule | event
    path        TEXT,                            -- api triggers: the path under /trigger/
    config      JSONB NOT NULL,
    state       TEXT NOT NULL,                   -- init | active | paused | stopped | destroyed
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
-- A path answers one live trigger per namespace; a destroyed one frees it.
CREATE UNIQUE INDEX triggers_path_unique ON triggers (namespace, path)
    WHERE path IS NOT NULL AND state <> 'destroyed';
CREATE INDEX triggers_by_namespace ON triggers (namespace, workflow_id, created_at);

-- Listing executions newest first (ids are exe_ + UUIDv7: they sort by
-- creation), and by subject.
CREATE INDEX executions_by_namespace ON executions (namespace, id);
CREATE INDEX executions_by_namespace_subject ON executions (namespace, subject, id)
    WHERE subject IS NOT NULL;
